"""Observability on the live stack: the API under `--workers 2` behind nginx (the shipped
template), the session's worker, a real Prometheus with the shipped config and alert rules,
and a headless locust run through nginx.

Every PromQL expression of the Grafana dashboard is run through Prometheus's HTTP API after
real traffic and must return data; the values are printed (`pytest -s`) as the dashboard's
stand-in screenshot.
"""

import json
import math
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import DEFAULT_MODEL
from tests.integration.conftest import UNSERVED_MODEL
from tests.integration.deploy_procs import (
    DASHBOARD,
    LocustRun,
    Nginx,
    Prometheus,
    run_locust,
)
from tests.integration.procs import ROOT, ApiProcess, RedisServer, WorkerProcess, wait_for

pytestmark = pytest.mark.integration

CHAT = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Say hello."}]}
RATE_WINDOW = "1m"  # what the test puts in place of Grafana's $__rate_interval


@pytest.fixture(scope="module")
def multi_api(redis_server: RedisServer, worker: WorkerProcess, logs: Path) -> Iterator[ApiProcess]:
    env = {"TOKENQ_MODELS": f"{DEFAULT_MODEL},{UNSERVED_MODEL}"}
    proc = ApiProcess(redis_server, logs / "api-multi.log", env, "--workers", "2")
    try:
        yield proc
    finally:
        proc.stop()  # its process group: uvicorn's worker processes too


@pytest.fixture(scope="module")
def nginx(multi_api: ApiProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    proc = Nginx(tmp_path_factory.mktemp("nginx"), f"127.0.0.1:{multi_api.port}")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def prometheus(
    multi_api: ApiProcess, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    prom = Prometheus(
        tmp_path_factory.mktemp("prometheus"),
        f"127.0.0.1:{multi_api.port}",
        f"127.0.0.1:{worker.metrics_port}",
    )

    def all_up() -> bool:
        return len(prom.query("up == 1")) == 3

    try:  # stopped even when its targets never come up
        wait_for(all_up, 30, "prometheus to scrape the API, the worker and itself")
        yield prom
    finally:
        prom.stop()


def served_flavours(url: str) -> list[str]:
    """The flavours this build serves: a missing route is FastAPI's plain 404."""
    probes = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages", "ollama": "/api/chat"}
    return [
        flavour
        for flavour, path in probes.items()
        if httpx.post(f"{url}{path}", json={}).json() != {"detail": "Not Found"}
    ]


def cancel_a_stream(url: str) -> None:
    """Start a streamed chat and hang up after its first token."""
    body = {**CHAT, "stream": True, "max_tokens": 24}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break


def edge_cases(url: str) -> None:
    """One request of each kind the dashboard shows besides plain successes."""
    unknown = httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert unknown.status_code == 404
    unserved = httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "model": UNSERVED_MODEL})
    assert unserved.status_code == 503
    assert httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "n": 3}).status_code == 400
    cancel_a_stream(url)


@pytest.fixture(scope="module")
def load(
    prometheus: Prometheus,
    nginx: Nginx,
    multi_api: ApiProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> LocustRun:
    """Real traffic while Prometheus scrapes every second: edge cases, ~20 s of locust through
    nginx, edge cases again (so their rates are not zero), then a few more scrapes."""
    edge_cases(multi_api.url)
    run = run_locust(
        nginx.url,
        tmp_path_factory.mktemp("locust"),
        served_flavours(multi_api.url),
        users=4,
        seconds=20,
        max_tokens=16,
    )
    edge_cases(multi_api.url)
    time.sleep(4)
    return run


def test_locust_run_has_no_failures_besides_429(load: LocustRun) -> None:
    print("\nlocust (Type, Name, Requests, Failures, Median ms, p95 ms):")
    for row in load.rows():
        print(
            f"  {row['Type']:5} {row['Name']:40} {row['Request Count']:>5} "
            f"{row['Failure Count']:>4} {row['Median Response Time']:>7} {row['95%']:>7}"
        )
    failures = {r["Name"]: r["Failure Count"] for r in load.rows() if r["Failure Count"] != "0"}
    assert not failures, load.output[-4000:]
    assert load.returncode == 0, load.output[-4000:]
    requests = {r["Name"]: int(r["Request Count"]) for r in load.rows("POST")}
    assert requests.get("openai chat stream", 0) > 0, requests
    assert requests.get("openai chat", 0) + requests.get("openai completion", 0) > 0, requests
    assert all("429" in name or "[" not in name for name in requests)
    ttft = {r["Name"]: int(r["Request Count"]) for r in load.rows("TTFT")}
    assert ttft.get("openai chat stream", 0) > 0, ttft


def panel_queries() -> Iterator[tuple[str, str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", RATE_WINDOW)
            yield panel["title"], target["refId"], re.sub(r"\$model\b", ".*", expr)


def describe(sample: dict[str, Any]) -> str:
    labels = ",".join(f"{k}={v}" for k, v in sorted(sample["metric"].items()) if k != "job")
    value = float(sample["value"][1])
    shown = "NaN" if math.isnan(value) else f"{value:.4g}"
    return f"{{{labels}}} {shown}"


def test_every_dashboard_query_returns_data(load: LocustRun, prometheus: Prometheus) -> None:
    empty, values = [], {}
    print("\ndashboard panels, each query's value after the run:")
    for title, ref, expr in panel_queries():
        result = prometheus.query(expr)
        values[(title, ref)] = result
        print(f"  [{title}] {ref}: " + ("; ".join(describe(s) for s in result) or "NO DATA"))
        if not result:
            empty.append((title, expr))
    assert not empty, empty

    def first(title: str, ref: str = "A", **labels: str) -> float:
        for sample in values[(title, ref)]:
            if all(sample["metric"].get(k) == v for k, v in labels.items()):
                return float(sample["value"][1])
        raise AssertionError(f"no {labels} in {title} {ref}: {values[(title, ref)]}")

    # The traffic shows up as real values, not just as series.
    assert first("Live workers", model=DEFAULT_MODEL) == 1
    assert first("Live workers", model=UNSERVED_MODEL) == 0
    assert first("Time to first token", "B", model=DEFAULT_MODEL) > 0
    assert first("Inter-token latency", "A", model=DEFAULT_MODEL) > 0
    assert first("Tokens per second", "A", model=DEFAULT_MODEL) > 0
    assert first("Worker busy ratio", model=DEFAULT_MODEL) > 0
    assert first("Admission rejections by reason", reason="no_worker", model=UNSERVED_MODEL) > 0
    assert first("Requests in flight and cancellations", "B", model=DEFAULT_MODEL) > 0
    assert first("Error rate", model=UNSERVED_MODEL) == 1  # all its requests got 503


def test_alert_rules_evaluate_without_error(load: LocustRun, prometheus: Prometheus) -> None:
    rules = [r for g in prometheus.get("/api/v1/rules")["groups"] for r in g["rules"]]
    assert {r["name"] for r in rules} == {
        "TokenqQueueSaturated",
        "TokenqNoLiveWorker",
        "TokenqTimeToFirstTokenHigh",
        "TokenqErrorRateHigh",
        "TokenqWorkerHeartbeatLost",
        "TokenqRedisUnreachable",
    }
    print("\nalert rules (health, state, active alerts):")
    for rule in rules:
        assert rule["health"] == "ok" and not rule.get("lastError"), rule
        assert rule["lastEvaluation"] > "2000", rule  # evaluated at least once
        prometheus.query(rule["query"])  # the expression itself runs
        active = [a["labels"].get("model", a["labels"].get("instance")) for a in rule["alerts"]]
        print(f"  {rule['name']}: {rule['health']}, {rule['state']}, {active}")
    no_worker = next(r for r in rules if r["name"] == "TokenqNoLiveWorker")
    active_models = {a["labels"]["model"] for a in no_worker["alerts"]}
    assert UNSERVED_MODEL in active_models and DEFAULT_MODEL not in active_models


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


OK_KEY = (
    "tokenq_requests_total",
    (("flavour", "openai"), ("model", DEFAULT_MODEL), ("status", "200")),
)


def serving_processes(api: ApiProcess) -> set[int]:
    lines = [json.loads(line) for line in api.output().splitlines() if line.startswith("{")]
    return {line["process"] for line in lines if line.get("message") == "request finished"}


def test_metrics_sum_over_the_api_processes(multi_api: ApiProcess, load: LocustRun) -> None:
    client = OpenAI(base_url=f"{multi_api.url}/v1", api_key="unused", max_retries=0)
    before = scrape(multi_api.url).get(OK_KEY, 0)
    sent = 0
    # Until both uvicorn processes have served requests (each connection is new).
    while sent < 4 or (len(serving_processes(multi_api)) < 2 and sent < 30):
        client.chat.completions.create(max_tokens=1, **CHAT)  # type: ignore[call-overload]
        sent += 1
    assert len(serving_processes(multi_api)) == 2
    # Whichever process answers a scrape, it reports the sum over both.
    seen = {scrape(multi_api.url)[OK_KEY] for _ in range(8)}
    assert seen == {before + sent}
    in_flight = scrape(multi_api.url)[("tokenq_requests_in_flight", (("flavour", "openai"),))]
    assert in_flight == 0


def test_request_id_through_nginx_reaches_the_worker_log(
    nginx: Nginx, multi_api: ApiProcess, worker: WorkerProcess
) -> None:
    given = f"trace-{uuid.uuid4().hex[:12]}"
    body = {**CHAT, "max_tokens": 4}
    response = httpx.post(
        f"{nginx.url}/v1/chat/completions", json=body, headers={"X-Request-ID": given}, timeout=60
    )
    made_up = httpx.post(f"{nginx.url}/v1/chat/completions", json=body, timeout=60)
    for answer, request_id in ((response, given), (made_up, made_up.headers["x-request-id"])):
        assert answer.status_code == 200
        assert answer.headers["x-request-id"] == request_id
        job_id = answer.json()["id"].removeprefix("chatcmpl-")
        wait_for(lambda rid=request_id: rid in worker.output(), 10, "the worker's log line")
        worker_lines = json_lines(worker.output(), request_id)
        assert {line["message"] for line in worker_lines} >= {"job started", "job finished"}
        assert {line["job_id"] for line in worker_lines} == {job_id}
        api_lines = json_lines(multi_api.output(), request_id)
        assert any(line["message"] == "request finished" for line in api_lines), api_lines
        assert request_id in nginx.log.read_text()  # nginx's JSON access log line
    assert re.fullmatch(r"[0-9a-f]{32}", made_up.headers["x-request-id"])  # nginx's $request_id


def json_lines(output: str, request_id: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("request_id") == request_id]


def test_nginx_streams_sse_frame_by_frame(nginx: Nginx) -> None:
    body = {**CHAT, "stream": True, "max_tokens": 40, "temperature": 0}
    url = f"{nginx.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reads = list(response.iter_raw())
    assert b"".join(reads).rstrip().endswith(b"data: [DONE]")
    # Frames reach the client as the worker makes them, not in one buffered block at the end.
    assert len(reads) >= 10, len(reads)

    client = OpenAI(base_url=f"{nginx.url}/v1", api_key="unused", max_retries=0)
    chunks = client.chat.completions.create(stream=True, max_tokens=8, **CHAT)  # type: ignore[call-overload]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


def test_compose_healthchecks_pass_against_the_running_programs(
    multi_api: ApiProcess, worker: WorkerProcess, nginx: Nginx, prometheus: Prometheus
) -> None:
    """Each service's healthcheck command, pointed at the same program started here."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    ports = {"api": multi_api.port, "worker": worker.metrics_port, "nginx": nginx.port,
             "prometheus": prometheus.port}  # fmt: skip
    for name, port in ports.items():
        test = compose[name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        if test[1] == "python":  # tokenq's image: run the very command
            code = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", test[3])
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
            assert done.returncode == 0, (name, done.stderr)
        else:  # busybox wget in the nginx/prometheus images: fetch the same URL
            assert test[1:4] == ["wget", "-q", "-O"], test
            url = urlsplit(test[5])
            response = httpx.get(f"http://127.0.0.1:{port}{url.path}", timeout=5)
            assert response.status_code == 200, (name, response.text)
