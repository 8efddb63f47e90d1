"""API metrics over fakeredis: request counters, rejections by reason, latency histograms,
the queue state read at scrape time, and X-Request-ID."""

import asyncio
import time

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.types import Message

from api import submit
from api.observe import RequestObservation
from shared import keys, registry
from shared.events import DoneEvent, FinishReason, Timings, Usage
from shared.job import Flavour, GenerationJob
from shared.lifecycle.admission import Extras, Refusal
from shared.metrics import ApiMetrics
from shared.queues import model_queue
from shared.settings import Settings
from tests.unit.api.harness import MODEL, Harness, until
from tests.unit.api.test_openai_api import CHAT


def metrics_of(harness: Harness) -> ApiMetrics:
    return harness.state.metrics


def value(harness: Harness, name: str, **labels: str) -> float:
    found = metrics_of(harness).registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def scrape(harness: Harness) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await harness.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_n_requests_count_n_with_tokens_and_latencies(harness: Harness) -> None:
    n = 3
    for i in range(n):
        response = await harness.call("/v1/chat/completions", {**CHAT, "stream": i % 2 == 1})
        assert response.status_code == 200
    ok = {"model": MODEL, "flavour": "openai", "status": "200"}
    assert value(harness, "tokenq_requests_total", **ok) == n
    assert value(harness, "tokenq_prompt_tokens_total", model=MODEL) == 4 * n
    assert value(harness, "tokenq_generation_tokens_total", model=MODEL) == 3 * n
    for histogram in (
        "tokenq_time_to_first_token_seconds",
        "tokenq_e2e_request_latency_seconds",
        "tokenq_request_queue_time_seconds",
    ):
        assert value(harness, f"{histogram}_count", model=MODEL) == n, histogram
    # Three deltas a request: two gaps between them.
    assert value(harness, "tokenq_inter_token_latency_seconds_count", model=MODEL) == 2 * n
    assert value(harness, "tokenq_requests_in_flight", flavour="openai") == 0
    assert value(harness, "tokenq_request_rejections_total", model=MODEL, reason="bad_request") == 0


async def test_queue_full_is_a_429_counted_with_its_reason(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_args: object) -> Refusal:  # another replica filled it after the early check
        return Refusal(64)

    monkeypatch.setattr(submit, "admit", full)
    response = await harness.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1
    assert value(harness, "tokenq_request_rejections_total", model=MODEL, reason="queue_full") == 1
    assert value(harness, "tokenq_requests_total", model=MODEL, flavour="openai", status="429") == 1


@pytest.mark.parametrize(
    ("body", "status", "model", "reason"),
    [
        ({**CHAT, "model": "nope"}, 404, "", "model_not_found"),
        ({**CHAT, "model": "idle"}, 503, "idle", "no_worker"),
        ({**CHAT, "temperature": 9}, 400, "", "bad_request"),
    ],
    ids=["unknown-model", "no-worker", "bad-body"],
)
async def test_rejections_by_reason(
    harness: Harness, body: dict[str, object], status: int, model: str, reason: str
) -> None:
    response = await harness.client.post("/v1/chat/completions", json=body)
    assert response.status_code == status
    assert value(harness, "tokenq_request_rejections_total", model=model, reason=reason) == 1
    assert (
        value(harness, "tokenq_requests_total", model=model, flavour="openai", status=str(status))
        == 1
    )
    assert value(harness, "tokenq_requests_in_flight", flavour="openai") == 0


async def test_worker_side_rejections_carry_the_model(harness: Harness) -> None:
    response = await harness.call("/v1/chat/completions", {**CHAT, "max_tokens": 1000})
    assert response.status_code == 400
    assert value(harness, "tokenq_request_rejections_total", model=MODEL, reason="bad_request") == 1

    harness.client._transport.app.state.tokenq.settings.queue_deadline_s = 0.2  # type: ignore[attr-defined]
    response = await harness.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 504
    assert value(harness, "tokenq_request_rejections_total", model=MODEL, reason="deadline") == 1


async def test_listing_models_is_not_a_generation_request(harness: Harness) -> None:
    assert (await harness.client.get("/v1/models")).status_code == 200
    assert (await harness.client.get("/v1/models/nope")).status_code == 404
    response = await scrape(harness)
    assert not [key for key in response if key[0] == "tokenq_requests_total"]
    assert value(harness, "tokenq_requests_in_flight", flavour="openai") == 0


async def test_scrape_reports_queue_state_per_known_model(harness: Harness) -> None:
    now = time.time()
    # Two jobs waiting and one expired; one running and one whose worker's lease lapsed.
    harness.redis.zadd(keys.waiting_jobs(MODEL), {"a-1": now + 60, "b-1": now + 60, "c-1": now - 1})
    harness.redis.zadd(keys.running_jobs(MODEL), {"d-1": now + 5, "e-1": now - 5})

    samples = await scrape(harness)
    assert samples[("tokenq_num_requests_waiting", (("model", MODEL),))] == 2
    assert samples[("tokenq_num_requests_running", (("model", MODEL),))] == 1
    assert samples[("tokenq_workers_live", (("model", MODEL),))] == 1
    assert samples[("tokenq_workers_live", (("model", "idle"),))] == 0
    assert samples[("tokenq_num_requests_waiting", (("model", "idle"),))] == 0
    assert samples[("tokenq_redis_up", ())] == 1


async def test_scrape_without_redis_still_answers(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*_args: object) -> None:
        raise RedisConnectionError("refused")

    monkeypatch.setattr(registry, "registered_models", down)
    samples = await scrape(harness)
    assert samples[("tokenq_redis_up", ())] == 0
    assert not [key for key in samples if key[0] == "tokenq_num_requests_waiting"]


async def test_request_id_is_returned_and_reaches_the_job(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    enqueued: list[GenerationJob] = []
    admit = submit.admit

    def recording(
        redis: Redis,
        job: GenerationJob,
        settings: Settings,
        extras: Extras | None = None,
        cap: int | None = None,
    ) -> Refusal | None:
        enqueued.append(job)
        return admit(redis, job, settings, extras, cap)

    monkeypatch.setattr(submit, "admit", recording)
    harness.client.headers["X-Request-ID"] = "trace-42"
    response = await harness.call("/v1/chat/completions", CHAT)
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-42"
    assert [job.request_id for job in enqueued] == ["trace-42"]


async def test_request_id_is_made_up_when_missing_or_unusable(harness: Harness) -> None:
    plain = await harness.client.get("/healthz")
    assert len(plain.headers["x-request-id"]) == 32
    odd = await harness.client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert odd.headers["x-request-id"] != "x" * 500


@pytest.mark.parametrize("cut_at", [0, 2], ids=["before-the-body", "mid-stream"])
async def test_a_stream_cut_short_is_a_cancellation(harness: Harness, cut_at: int) -> None:
    """Through the app's own route: its streamed response closes the request's observation
    once sent, or once sending failed, with the status the stream had come to."""

    sent: list[Message] = []

    async def send(message: Message) -> None:
        if len(sent) == cut_at:  # the client leaves: the server cancels the response
            raise anyio.get_cancelled_exc_class()
        sent.append(message)

    request = asyncio.create_task(
        harness.asgi("/v1/chat/completions", {**CHAT, "stream": True}, send=send)
    )
    await until(lambda: model_queue(harness.redis, MODEL).count, "the job to be queued")
    harness.work()  # all its events are published before the response starts
    with pytest.raises(anyio.get_cancelled_exc_class()):
        await request
    assert value(harness, "tokenq_request_cancellations_total", model=MODEL, flavour="openai") == 1
    assert value(harness, "tokenq_requests_total", model=MODEL, flavour="openai", status="499") == 1
    assert value(harness, "tokenq_requests_in_flight", flavour="openai") == 0


def test_done_event_feeds_queue_time_and_tokens() -> None:
    metrics = ApiMetrics()
    observation = RequestObservation(metrics, Flavour.OPENAI, counted=True)
    done = DoneEvent(
        finish_reason=FinishReason.STOP,
        usage=Usage(prompt_tokens=7, completion_tokens=5),
        timings=Timings(queued=0.25, prompt_eval=0.1, decode=0.2),
    )
    observation.event(done)
    observation.close(200)
    get = metrics.registry.get_sample_value
    assert get("tokenq_request_queue_time_seconds_sum", {"model": ""}) == 0.25
    assert get("tokenq_prompt_tokens_total", {"model": ""}) == 7
    assert get("tokenq_generation_tokens_total", {"model": ""}) == 5
