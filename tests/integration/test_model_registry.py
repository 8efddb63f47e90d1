"""Two registered models side by side: the shipped one and a Q4_0 copy quantized during the
run, each with a worker, behind one API; and the `tokenq model` commands around them.

The module has a Redis of its own, so its models never show in the session stack's catalogs.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from redis import Redis

from shared import keys
from shared.exits import ExitStatus
from shared.model_registry.entry import ModelEntry
from shared.model_registry.store import ModelRegistry
from shared.registry import live_workers_now
from shared.settings import DEFAULT_MODEL, DEFAULT_MODEL_ALIAS, default_gguf_path
from tests.integration.clients import sse, wait_until
from tests.integration.procs import (
    ROOT,
    ApiProcess,
    Process,
    RedisServer,
    WorkerProcess,
    free_port,
    stop_all,
    wait_for,
)

pytestmark = pytest.mark.integration

QUANTIZED = "smollm2-q4_0"
QUANTIZED_ALIAS = "q4"
SHIPPED_ALIAS = "tiny"
QUANTIZED_MAX_TOKENS = 5  # the quantized model's default max_tokens
USER = [{"role": "user", "content": "Say hi."}]


@dataclass
class TwoModels:
    redis: RedisServer
    shipped: WorkerProcess
    quantized: WorkerProcess
    api: ApiProcess
    logs: Path

    def cli(self, *args: str, url: str | None = None) -> "subprocess.CompletedProcess[str]":
        return model_cli(url or self.redis.url, *args)

    def entries(self) -> dict[str, ModelEntry]:
        return {e.name: e for e in ModelRegistry(self.redis.client()).entries()}


def model_cli(redis_url: str, *args: str) -> "subprocess.CompletedProcess[str]":
    """`tokenq model ARGS` against `redis_url`, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "model", *args],
        cwd=ROOT,
        env={**os.environ, "TOKENQ_REDIS_URL": redis_url, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=180,
    )


def succeeded(done: "subprocess.CompletedProcess[str]") -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoModels]:
    tmp = tmp_path_factory.mktemp("two-models")
    redis = RedisServer(tmp)
    redis.start()
    started: list[Process | RedisServer] = [redis]
    try:
        shipped = str(default_gguf_path())
        succeeded(model_cli(redis.url, "add", shipped, "--name", DEFAULT_MODEL,
                            "--alias", DEFAULT_MODEL_ALIAS, "--alias", SHIPPED_ALIAS))  # fmt: skip
        succeeded(model_cli(redis.url, "quantize", DEFAULT_MODEL, "--type", "Q4_0",
                            "--as", QUANTIZED, "--alias", QUANTIZED_ALIAS,
                            "--max-tokens", str(QUANTIZED_MAX_TOKENS)))  # fmt: skip
        first = WorkerProcess(redis, DEFAULT_MODEL, tmp / "worker-shipped.log", "--slots", "1")
        started.append(first)
        second = WorkerProcess(redis, QUANTIZED, tmp / "worker-quantized.log", "--slots", "1")
        started.append(second)
        # The quantized model admits one waiting job, the shipped one the default (64).
        limits = json.dumps({QUANTIZED: {"max_queued": 1}})
        api = ApiProcess(redis, tmp / "api.log", {"TOKENQ_MODEL_LIMITS": limits})
        started.append(api)
        yield TwoModels(redis, first, second, api, tmp)
    finally:
        stop_all(reversed(started))


def worker_of(two: TwoModels, job_id: str) -> str:
    view = httpx.get(f"{two.api.url}/v1/jobs/{job_id}", timeout=30).json()
    return str(view["worker"])


def test_model_list_shows_both_with_their_live_workers(two: TwoModels) -> None:
    listed = succeeded(two.cli("list"))
    print(listed)  # the table, for the record (-s)
    entries = two.entries()
    assert set(entries) == {DEFAULT_MODEL, QUANTIZED}
    rows = {line.split("│")[1].strip(): line for line in listed.splitlines() if "│" in line}
    assert "Q4_1" in rows[DEFAULT_MODEL] and "Q4_0" in rows[QUANTIZED]
    for name, entry in entries.items():
        assert entry.digest[:12] in rows[name]
        assert rows[name].rstrip(" │").endswith("1")  # one live worker each
    assert entries[QUANTIZED].parent == f"{DEFAULT_MODEL} Q4_0"
    shown = succeeded(two.cli("show", QUANTIZED_ALIAS))
    assert f"sha256:{entries[QUANTIZED].digest}" in shown and "max_tokens=5" in shown


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        (DEFAULT_MODEL, DEFAULT_MODEL),
        (SHIPPED_ALIAS, DEFAULT_MODEL),
        (DEFAULT_MODEL_ALIAS, DEFAULT_MODEL),
        (QUANTIZED, QUANTIZED),
        (QUANTIZED_ALIAS, QUANTIZED),
    ],
)
def test_requests_go_to_the_named_models_worker(two: TwoModels, name: str, canonical: str) -> None:
    client = OpenAI(base_url=f"{two.api.url}/v1", api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(model=name, messages=USER, max_tokens=2)  # type: ignore[arg-type]
    assert reply.model == canonical
    worker = two.shipped if canonical == DEFAULT_MODEL else two.quantized
    assert f"-{worker.pid}-" in worker_of(two, reply.id.removeprefix("chatcmpl-"))
    ollama = httpx.post(
        f"{two.api.url}/api/chat",
        json={"model": name, "messages": USER, "stream": False, "options": {"num_predict": 2}},
        timeout=120,
    )
    assert ollama.status_code == 200, ollama.text
    assert ollama.json()["model"] == name  # Ollama echoes the name given


def test_every_api_lists_both_with_the_registered_digests(two: TwoModels) -> None:
    digests = {name: entry.digest for name, entry in two.entries().items()}
    cards = httpx.get(f"{two.api.url}/v1/models", timeout=30).json()["data"]
    assert {c["id"]: c["digest"] for c in cards} == {n: f"sha256:{d}" for n, d in digests.items()}
    for listing in ("tags", "ps"):
        models = httpx.get(f"{two.api.url}/api/{listing}", timeout=30).json()["models"]
        assert {m["name"]: m["digest"] for m in models} == {
            f"{n}:latest": d for n, d in digests.items()
        }
    for name, level in ((SHIPPED_ALIAS, "Q4_1"), (QUANTIZED_ALIAS, "Q4_0")):
        shown = httpx.post(f"{two.api.url}/api/show", json={"model": name}, timeout=30).json()
        assert shown["details"]["quantization_level"] == level


def test_the_models_defaults_apply_when_a_request_leaves_them_out(two: TwoModels) -> None:
    client = OpenAI(base_url=f"{two.api.url}/v1", api_key="unused", max_retries=0, timeout=120)
    body = {"model": QUANTIZED_ALIAS, "prompt": "1, 2, 3,", "extra_body": {"ignore_eos": True}}
    left_out = client.completions.create(**body)  # type: ignore[call-overload]
    assert left_out.usage.completion_tokens == QUANTIZED_MAX_TOKENS
    assert left_out.choices[0].finish_reason == "length"
    sent = client.completions.create(max_tokens=2, **body)  # type: ignore[call-overload]
    assert sent.usage.completion_tokens == 2


def test_each_model_has_its_own_queue_limit(two: TwoModels) -> None:
    long = {"model": QUANTIZED, "prompt": "1, 2, 3,", "max_tokens": 3000, "ignore_eos": True}
    chat = f"{two.api.url}/v1/chat/completions"
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", f"{two.api.url}/v1/completions", json={**long, "stream": True})
        as busy,
    ):  # fmt: skip
        assert busy.status_code == 200
        events = sse(busy)
        next(e for e in events if e.get("choices") and e["choices"][0]["text"])
        # Its one slot taken: one more job waits, which fills its queue.
        waiting: list[httpx.Response] = []
        queued = threading.Thread(
            target=lambda: waiting.append(
                httpx.post(chat, json={"model": QUANTIZED, "messages": USER, "max_tokens": 1},
                           timeout=120)
            )
        )  # fmt: skip
        queued.start()
        redis = two.redis.client()
        wait_until(lambda: redis.zcard(keys.waiting_jobs(QUANTIZED)) == 1, 60, "a waiting job")
        full = httpx.post(chat, json={"model": QUANTIZED_ALIAS, "messages": USER}, timeout=60)
        assert full.status_code == 429, full.text
        assert "smollm2-q4_0" in full.json()["error"]["message"]
        other = httpx.post(
            chat, json={"model": DEFAULT_MODEL, "messages": USER, "max_tokens": 2}, timeout=120
        )
        assert other.status_code == 200, other.text
    queued.join(timeout=120)  # the busy stream closed: the waiting job runs
    assert waiting and waiting[0].status_code == 200


def test_rm_of_a_model_with_a_live_worker_is_refused(two: TwoModels) -> None:
    refused = two.cli("rm", QUANTIZED_ALIAS)
    assert refused.returncode == 1
    assert "served by 1 live worker" in refused.stderr and "--force" in refused.stderr
    assert QUANTIZED in two.entries()


def test_an_altered_file_fails_verify_and_its_worker_refuses_to_start(
    two: TwoModels, models_dir: Path
) -> None:
    copy = two.logs / "altered-source.gguf"
    shutil.copy(default_gguf_path(), copy)
    with copy.open("ab") as file:  # another file than the shipped one (digest and all)
        file.write(b"\0" * 32)
    added = succeeded(two.cli("add", str(copy), "--name", "altered", "--copy"))
    assert "altered: registered" in added
    entry = two.entries()["altered"]
    kept = models_dir / f"sha256-{entry.digest}.gguf"
    assert not kept.is_symlink()
    assert succeeded(two.cli("verify", "altered")).startswith("altered: ok")
    with kept.open("r+b") as file:  # one byte of its tensor data changed
        file.seek(-64, os.SEEK_END)
        file.write(b"\1")
    verify = two.cli("verify")
    assert verify.returncode == 1
    assert "altered: FAILED" in verify.stderr and "was changed" in verify.stderr
    assert f"{DEFAULT_MODEL}: ok" in verify.stdout and f"{QUANTIZED}: ok" in verify.stdout
    worker = Process(
        ["worker", "--model", "altered", "--threads", "1"],
        {"TOKENQ_REDIS_URL": two.redis.url},
        two.logs / "worker-altered.log",
    )
    try:
        wait_for(lambda: worker.proc.poll() is not None, 60, "the altered worker to exit")
    finally:
        worker.stop()
    assert worker.proc.returncode == ExitStatus.MODEL_FILE_INVALID
    assert "not starting" in worker.output() and "was changed" in worker.output()
    removed = succeeded(two.cli("rm", "altered"))  # no worker: removed, with its file
    assert "altered: removed" in removed and not kept.exists()
    assert "altered" not in two.entries()


def test_export_then_import_restores_the_registry(two: TwoModels) -> None:
    manifest = two.logs / "models.json"
    assert "2 model(s) written" in succeeded(two.cli("export", str(manifest)))
    elsewhere = two.redis.url.rsplit("/", 1)[0] + "/5"  # another database: an empty registry
    imported = succeeded(two.cli("import", str(manifest), url=elsewhere))
    assert f"{QUANTIZED}: imported" in imported and "not on this host" not in imported
    restored = ModelRegistry(Redis.from_url(elsewhere)).entries()
    assert restored == list(two.entries().values())
    again = two.cli("import", str(manifest), url=elsewhere)
    assert again.returncode == 1 and "already registered" in again.stderr


def test_up_starts_a_worker_per_model(two: TwoModels) -> None:
    port = free_port()
    up = Process(
        ["up", "--port", str(port), "--model", SHIPPED_ALIAS, "--model", QUANTIZED_ALIAS],
        {"TOKENQ_REDIS_URL": two.redis.url, "TOKENQ_LOG_FORMAT": "text"},
        two.logs / "up.log",
    )
    redis = two.redis.client()
    try:
        for model in (DEFAULT_MODEL, QUANTIZED):  # the module's worker and up's
            wait_for(lambda m=model: len(live_workers_now(redis, m)) == 2, 120, f"up's {model}")
        wait_for(lambda: "tokenq is up" in up.output(), 60, "tokenq up to announce itself")
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=30).json()
        assert ready["models"] == {DEFAULT_MODEL: 2, QUANTIZED: 2}
        assert up.proc.poll() is None
    finally:
        up.stop()
