"""API keys, quotas, priorities and fairness against the real stack: two API replicas with
`TOKENQ_AUTH=required`, a worker of its own (one slot, its own model name, so no other
test's worker takes its jobs), keys made with the `tokenq keys` command, and the official
clients."""

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest

from shared import keys
from shared.lifecycle import JobRecord
from tests.integration.procs import ROOT, ApiProcess, RedisServer, WorkerProcess

MODEL = "smollm2-tenancy"
MAX_QUEUED = 8  # each key may hold half: 4 waiting jobs
USER = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, logs: Path
) -> Iterator[tuple[ApiProcess, ApiProcess, WorkerProcess]]:
    env = {
        "TOKENQ_AUTH": "required",
        "TOKENQ_MODELS": MODEL,
        "TOKENQ_MODEL_LIMITS": f'{{"{MODEL}": {{"max_queued": {MAX_QUEUED}}}}}',
    }
    # Batch jobs never overtake in this module: the starvation bound is far away.
    os.environ["TOKENQ_BATCH_MAX_WAIT_S"] = "600"
    try:
        with ExitStack() as started:
            worker = WorkerProcess(redis_server, MODEL, logs / "tenancy-worker.log", "--slots", "1")
            started.callback(worker.stop)
            first = ApiProcess(redis_server, logs / "tenancy-api-1.log", env)
            started.callback(first.stop)
            second = ApiProcess(redis_server, logs / "tenancy-api-2.log", env)
            started.callback(second.stop)
            yield first, second, worker
    finally:
        os.environ.pop("TOKENQ_BATCH_MAX_WAIT_S", None)


SECRETS: list[str] = []  # every secret handed out here: none may appear in a log


def tokenq_keys(redis: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "keys", *args],
        cwd=ROOT,
        env={**os.environ, "TOKENQ_REDIS_URL": redis.url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def create_key(redis: RedisServer, name: str, *options: str) -> str:
    secret = tokenq_keys(redis, "create", name, *options).stdout.strip()
    assert re.fullmatch(r"tq-[A-Za-z0-9_-]{43}", secret), secret
    SECRETS.append(secret)
    return secret


def chat(api: ApiProcess, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key=secret, max_retries=0, timeout=180)


def ask(api: ApiProcess, secret: str, max_tokens: int = 4, **extra: object) -> httpx.Response:
    """One non-streaming chat completion, greedy, exactly `max_tokens` tokens generated."""
    body = {
        "model": MODEL,
        "messages": USER,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    return httpx.post(
        f"{api.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {secret}", **extra},  # type: ignore[dict-item]
        timeout=180,
    )


def test_401_and_403_in_each_flavours_shape_with_the_official_clients(
    stack: tuple[ApiProcess, ApiProcess, WorkerProcess], redis_server: RedisServer
) -> None:
    api = stack[0]
    other_model_only = create_key(redis_server, "other-only", "--models", "some-other-model")
    with pytest.raises(openai.AuthenticationError) as no_key:
        chat(api, "tq-wrong").chat.completions.create(model=MODEL, messages=USER, max_tokens=2)  # type: ignore[arg-type]
    assert no_key.value.code == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError):
        chat(api, other_model_only).chat.completions.create(
            model=MODEL,
            messages=USER,  # type: ignore[arg-type]
            max_tokens=2,
        )
    claude = anthropic.Anthropic(base_url=api.url, api_key="tq-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as bad:
        claude.messages.create(model=MODEL, max_tokens=2, messages=USER)  # type: ignore[arg-type]
    assert bad.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    claude = anthropic.Anthropic(base_url=api.url, api_key=other_model_only, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        claude.messages.create(model=MODEL, max_tokens=2, messages=USER)  # type: ignore[arg-type]
    assert denied.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    for headers, status in (({}, 401), ({"Authorization": f"Bearer {other_model_only}"}, 403)):
        local = ollama.Client(host=api.url, headers=headers, timeout=180)
        with pytest.raises(ollama.ResponseError) as refused:
            local.chat(model=MODEL, messages=USER)
        assert refused.value.status_code == status
    # With a good key all three work.
    good = create_key(redis_server, "all-flavours")
    reply = chat(api, good).chat.completions.create(model=MODEL, messages=USER, max_tokens=2)  # type: ignore[arg-type]
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
    message = anthropic.Anthropic(base_url=api.url, api_key=good, max_retries=0).messages.create(
        model=MODEL,
        max_tokens=2,
        messages=USER,  # type: ignore[arg-type]
    )
    assert message.usage.output_tokens >= 1
    local = ollama.Client(host=api.url, headers={"Authorization": f"Bearer {good}"}, timeout=180)
    assert local.chat(model=MODEL, messages=USER, options={"num_predict": 2}).done


def test_revocation_and_rotation_hold_on_another_replica_at_once(
    stack: tuple[ApiProcess, ApiProcess, WorkerProcess], redis_server: RedisServer
) -> None:
    first, second, _ = stack
    secret = create_key(redis_server, "revoked-soon")
    assert ask(first, secret, 1).status_code == 200
    assert ask(second, secret, 1).status_code == 200
    rotated = tokenq_keys(redis_server, "rotate", "revoked-soon").stdout.strip()
    SECRETS.append(rotated)
    assert ask(second, secret, 1).status_code == 401  # the old secret, at once
    assert ask(second, rotated, 1).status_code == 200
    tokenq_keys(redis_server, "revoke", "revoked-soon")
    assert ask(second, rotated, 1).status_code == 401  # the next request, on the other one
    assert ask(first, rotated, 1).status_code == 401
    listing = tokenq_keys(redis_server, "list").stdout
    assert "all-flavours" in listing or "revoked-soon" not in listing
    assert not any(s in listing for s in SECRETS)


def test_requests_per_minute_hit_exactly_across_two_replicas(
    stack: tuple[ApiProcess, ApiProcess, WorkerProcess], redis_server: RedisServer
) -> None:
    first, second, _ = stack
    secret = create_key(redis_server, "rpm-4", "--rpm", "4")
    statuses = [ask((first, second)[i % 2], secret, 1) for i in range(6)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 200, 429, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in statuses[:4]] == [
        "3",
        "2",
        "1",
        "0",
    ]
    refused = statuses[4]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_tokens_per_minute_hit_exactly_across_two_replicas(
    stack: tuple[ApiProcess, ApiProcess, WorkerProcess], redis_server: RedisServer
) -> None:
    first, second, _ = stack
    probe = ask(first, create_key(redis_server, "tpm-probe"), 4).json()["usage"]
    prompt, generated = probe["prompt_tokens"], probe["completion_tokens"]
    assert generated == 4
    # Room for two whole requests and one more prompt: the third passes (its prompt fits),
    # the fourth does not (the third's generated tokens were charged when it ended).
    tpm = 2 * (prompt + generated) + prompt
    secret = create_key(redis_server, "tpm", "--tpm", str(tpm))
    statuses = [ask((first, second)[i % 2], secret, 4) for i in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert statuses[0].headers["x-ratelimit-remaining-tokens"] == str(tpm - prompt)
    assert statuses[3].headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(statuses[3].headers["retry-after"]) >= 1


def test_one_key_flooding_cannot_push_another_into_429s(
    stack: tuple[ApiProcess, ApiProcess, WorkerProcess], redis_server: RedisServer
) -> None:
    first, second, _ = stack
    flood, calm = create_key(redis_server, "flood"), create_key(redis_server, "calm")
    outcomes: dict[str, list[int]] = {"flood": [], "calm": []}
    lock = threading.Lock()

    def send(who: str, secret: str, api: ApiProcess) -> None:
        status = ask(api, secret, 8).status_code
        with lock:
            outcomes[who].append(status)

    floods = [
        threading.Thread(target=send, args=("flood", flood, (first, second)[i % 2]))
        for i in range(24)
    ]
    for thread in floods:
        thread.start()
    time.sleep(1.0)  # the flood has filled its share of the queue
    calms = [
        threading.Thread(target=send, args=("calm", calm, (first, second)[i % 2])) for i in range(3)
    ]
    for thread in calms:
        thread.start()
    for thread in floods + calms:
        thread.join(timeout=300)
    print(
        f"\nflood: {outcomes['flood'].count(200)} served, {outcomes['flood'].count(429)} 429; "
        f"calm: {outcomes['calm'].count(200)} served, {outcomes['calm'].count(429)} 429"
    )
    assert outcomes["calm"] == [200, 200, 200]
    assert outcomes["flood"].count(429) >= 24 - MAX_QUEUED  # its share, not the whole queue
    assert set(outcomes["flood"]) <= {200, 429}


def test_a_queue_of_batch_jobs_is_passed_by_an_interactive_one(
    stack: tuple[ApiProcess, ApiProcess, WorkerProcess], redis_server: RedisServer
) -> None:
    first, second, _ = stack
    bulk = create_key(redis_server, "bulk", "--priority", "batch")
    web = create_key(redis_server, "web")
    ids: dict[str, str] = {}

    def send(label: str, secret: str, max_tokens: int, api: ApiProcess) -> None:
        response = ask(api, secret, max_tokens)
        assert response.status_code == 200, response.text
        ids[label] = response.json()["id"][-32:]

    def queued(label: str, *args: object) -> threading.Thread:
        thread = threading.Thread(target=send, args=(label, *args))
        thread.start()
        return thread

    # Holds the worker's one slot until every other job is in line (~3 s on 2 idle cores).
    blocker = queued("blocker", web, 400, first)
    wait_until_running(redis_server)
    threads = [blocker]
    for i in range(3):  # a queue of batch jobs (the key's class) ...
        threads.append(queued(f"batch-{i}", bulk, 2, (first, second)[i % 2]))
        time.sleep(0.3)
    threads.append(queued("interactive", web, 2, second))  # ... then one interactive job
    client = redis_server.client()
    deadline = time.monotonic() + 60
    while client.zcard(keys.waiting_jobs(MODEL)) < 4:
        assert time.monotonic() < deadline, "the four jobs never queued"
        time.sleep(0.02)
    assert client.zcard(keys.running_jobs(MODEL)) == 1, "the blocker ended before all queued"
    for thread in threads:
        thread.join(timeout=300)
    started = {}
    for label, job_id in ids.items():
        record = JobRecord.from_hash(job_id, client.hgetall(keys.job_record(job_id)))
        assert record is not None and record.started_at is not None
        started[label] = record.started_at
    order = sorted(started, key=started.__getitem__)
    assert order == ["blocker", "interactive", "batch-0", "batch-1", "batch-2"], order


def wait_until_running(redis: RedisServer) -> None:
    deadline = time.monotonic() + 120
    while not redis.client().zcard(keys.running_jobs(MODEL)):
        assert time.monotonic() < deadline, "the blocking job never started"
        time.sleep(0.02)


def test_no_key_text_in_any_log_line(
    stack: tuple[ApiProcess, ApiProcess, WorkerProcess],
) -> None:
    assert SECRETS, "run with the tests above"
    for proc in stack:
        text = proc.output()
        assert text, proc.log
        for secret in [*SECRETS, "tq-wrong"]:
            assert secret not in text, f"a key's text is in {proc.log}"
