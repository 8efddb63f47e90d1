"""Worker metrics and job log lines, and the worker's metrics/probe server."""

import io
import json
import logging
import logging.config
import time
from collections.abc import Iterator

import httpx
import pytest

from shared import logs
from shared.events import ErrorCode, ErrorEvent
from shared.job import ChatMessage, Flavour, GenerationJob
from shared.metrics import WorkerMetrics
from shared.registry import WorkerInfo
from tests.fakes import EOS, FakeEngine, RecordingPublisher
from worker.engine import EngineInfo
from worker.observe import WorkerObserver, serve
from worker.runner import JobRunner

INFO = WorkerInfo(
    worker_id="w-1", model="m", n_ctx=64, backend="cpu", gguf="/m.gguf", started_at=0, pid=1
)


def job(**fields: object) -> GenerationJob:
    return GenerationJob.model_validate(
        {
            "model": "m",
            "messages": [ChatMessage(role="user", content="hi")],
            "flavour": Flavour.OPENAI,
            "deadline": time.time() + 60,
            **fields,
        }
    )


@pytest.fixture
def observer() -> WorkerObserver:
    observer = WorkerObserver(WorkerMetrics("m"), heartbeat_ttl_s=5)
    observer.loaded(INFO, EngineInfo(n_ctx=64, backend="cpu", slots=1, load_seconds=0.5,
                                     quantization="Q4_1"))  # fmt: skip
    return observer


def sample(observer: WorkerObserver, name: str, **labels: str) -> float | None:
    return observer.metrics.registry.get_sample_value(name, labels)


def test_jobs_by_outcome_tokens_and_busy_time(observer: WorkerObserver) -> None:
    runner = JobRunner(FakeEngine([b"a", b"b", b"c", EOS]), RecordingPublisher(), observer=observer)
    for _ in range(2):
        runner.run(job())
    runner.run(job(deadline=time.time() - 1))  # expired in the queue: an error outcome

    assert sample(observer, "tokenq_worker_jobs_total", model="m", outcome="stop") == 2
    assert sample(observer, "tokenq_worker_jobs_total", model="m", outcome="deadline_exceeded") == 1
    assert sample(observer, "tokenq_worker_generation_tokens_total", model="m") == 6
    assert sample(observer, "tokenq_worker_prompt_tokens_total", model="m") == 8
    assert sample(observer, "tokenq_worker_busy", model="m") == 0
    busy_s = sample(observer, "tokenq_worker_busy_seconds_total", model="m")
    assert busy_s is not None and busy_s > 0
    rate = sample(observer, "tokenq_worker_decode_tokens_per_second", model="m")
    assert rate is not None and rate > 0


def test_busy_while_a_job_runs(observer: WorkerObserver) -> None:
    the_job = job()
    observer.started(the_job)
    assert sample(observer, "tokenq_worker_busy", model="m") == 1
    first = sample(observer, "tokenq_worker_busy_seconds_total", model="m")
    time.sleep(0.01)
    second = sample(observer, "tokenq_worker_busy_seconds_total", model="m")
    assert first is not None and second is not None and second > first  # counts while running
    observer.finished(the_job, None)
    assert sample(observer, "tokenq_worker_busy", model="m") == 0
    assert sample(observer, "tokenq_worker_jobs_total", model="m", outcome="interrupted") == 1


def test_info_load_time_and_slots(observer: WorkerObserver) -> None:
    labels = {
        "model": "m",
        "worker_id": "w-1",
        "backend": "cpu",
        "n_ctx": "64",
        "quantization": "Q4_1",
        "slots": "1",
        "gguf": "/m.gguf",
    }
    assert sample(observer, "tokenq_worker_info", **labels) == 1
    assert sample(observer, "tokenq_worker_model_load_seconds", model="m") == 0.5
    assert sample(observer, "tokenq_worker_slots", model="m") == 1


@pytest.fixture
def server(observer: WorkerObserver) -> Iterator[str]:
    httpd = serve(observer, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def test_probe_server(observer: WorkerObserver, server: str) -> None:
    assert httpx.get(f"{server}/healthz").status_code == 200
    assert httpx.get(f"{server}/readyz").status_code == 503  # no heartbeat yet
    observer.heartbeat()
    assert httpx.get(f"{server}/readyz").status_code == 200
    metrics = httpx.get(f"{server}/metrics")
    assert metrics.status_code == 200
    assert 'tokenq_worker_slots{model="m"} 1.0' in metrics.text
    assert "tokenq_worker_heartbeat_timestamp_seconds" in metrics.text


def test_stale_heartbeat_is_not_ready() -> None:
    observer = WorkerObserver(WorkerMetrics("m"), heartbeat_ttl_s=0.01)
    observer.loaded(INFO, EngineInfo(n_ctx=64, backend="cpu", slots=1, load_seconds=0))
    observer.heartbeat()
    time.sleep(0.02)
    assert not observer.ready()


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The project's JSON logging config, writing to a buffer."""
    config = logs.logging_config("json")
    config["handlers"]["stderr"]["stream"] = stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logging.config.dictConfig(config)
    yield stream
    root.handlers, root.level = saved[0], saved[1]


def test_job_log_lines_carry_job_and_request_ids(
    observer: WorkerObserver, json_log: io.StringIO
) -> None:
    the_job = job(request_id="trace-7")
    JobRunner(FakeEngine([b"a", EOS]), RecordingPublisher(), observer=observer).run(the_job)
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    mine = [line for line in lines if line.get("logger") == "tokenq.jobs"]
    assert [line["message"] for line in mine] == ["job started", "job finished"]
    for line in mine:
        assert line["job_id"] == the_job.id and line["request_id"] == "trace-7"
        assert line["level"] == "INFO" and "time" in line
    assert mine[-1]["outcome"] == "stop" and mine[-1]["completion_tokens"] == 1


def test_error_outcome_is_logged_with_its_message(
    observer: WorkerObserver, json_log: io.StringIO
) -> None:
    observer.finished(job(), ErrorEvent(code=ErrorCode.INTERNAL, message="boom"))
    line = json.loads(json_log.getvalue().splitlines()[-1])
    assert line["outcome"] == "internal_error" and line["error"] == "boom"


def test_step_rates_over_the_window() -> None:
    from worker.engine import StepStats
    from worker.observe import _StepWindow

    window = _StepWindow(span_s=60)
    decode, prefill = 0.0, 0.0
    for _ in range(10):
        decode, prefill = window.add(
            StepStats(sequences=2, prompt_tokens=0, decoded_tokens=2, seconds=0.01, kv_cells_used=9)
        )
    assert decode > 0 and prefill == 0.0
    _, prefill = window.add(
        StepStats(sequences=1, prompt_tokens=100, decoded_tokens=0, seconds=0.5, kv_cells_used=9)
    )
    assert prefill == 200.0  # 100 prompt tokens in 0.5 s of prefill steps
