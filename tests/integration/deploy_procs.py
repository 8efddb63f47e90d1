"""The deploy programs, started directly as docker-compose.yml starts them: nginx with the
shipped template, Prometheus with the shipped config and alert rules, and locust.

As in procs.py, each runs as a process group of its own, stopped with a SIGKILL fallback, and
one whose start-up wait fails is stopped before the error propagates."""

import csv
import os
import shutil
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.integration.procs import (
    ROOT,
    free_port,
    start_group,
    stop_group,
    stopped_on_failure,
    wait_for,
)

DEPLOY = ROOT / "deploy"
NGINX_TEMPLATE = DEPLOY / "nginx" / "templates" / "default.conf.template"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERT_RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tokenq.json"
LOCUSTFILE = DEPLOY / "locust" / "locustfile.py"


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    assert found, f"{name} is not installed (make test installs it)"
    return found


def render_nginx(tmp: Path, upstream: str, port: int) -> Path:
    """The template as the nginx image's envsubst renders it, inside a main config of our own
    (the image's nginx.conf includes it inside `http {}` the same way)."""
    server = string.Template(NGINX_TEMPLATE.read_text()).safe_substitute(
        TOKENQ_API_UPSTREAM=upstream, NGINX_RESOLVER="127.0.0.1", NGINX_PORT=str(port)
    )
    (tmp / "default.conf").write_text(server)
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp_paths = "\n".join(f"    {kind}_temp_path {tmp / kind};" for kind in kinds)
    main = tmp / "nginx.conf"
    main.write_text(
        f"""worker_processes 1;
pid {tmp / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
{temp_paths}
    include {tmp / "default.conf"};
}}
"""
    )
    return main


class Nginx:
    def __init__(self, tmp: Path, upstream: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = render_nginx(tmp, upstream, self.port)
        self.log = tmp / "nginx.log"
        self._log_file = self.log.open("wb")
        self.proc = start_group(
            [tool("nginx"), "-e", "stderr", "-p", str(tmp), "-c", str(self.config),
             "-g", "daemon off;"],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        with stopped_on_failure(self):
            wait_for(self._healthy, 15, f"nginx ({self.log})")

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return httpx.get(f"{self.url}/nginx-health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """SIGTERM (nginx's fast shutdown), SIGKILL to its master and worker after 10 s."""
        try:
            stop_group(self.proc, timeout_s=10)
        finally:
            self._log_file.close()


def prometheus_test_config(tmp: Path, api: str, worker: str, port: int) -> Path:
    """The shipped config with its service discovery swapped for the test's processes, and a
    1 s scrape and evaluation interval; job names and alert rules unchanged."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {"tokenq-api": api, "tokenq-worker": worker, "prometheus": f"127.0.0.1:{port}"}
    assert [job["job_name"] for job in config["scrape_configs"]] == list(targets)
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / f) for f in config["rule_files"]]
    config["scrape_configs"] = [
        {"job_name": job, "static_configs": [{"targets": [target]}]}
        for job, target in targets.items()
    ]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus:
    def __init__(self, tmp: Path, api: str, worker: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = prometheus_test_config(tmp, api, worker, self.port)
        self.log = tmp / "prometheus.log"
        self._log_file = self.log.open("wb")
        self.proc = start_group(
            [
                tool("prometheus"),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        with stopped_on_failure(self):
            wait_for(self._ready, 30, f"prometheus ({self.log})")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def get(self, path: str) -> Any:
        body = httpx.get(f"{self.url}{path}", timeout=10).json()
        assert body["status"] == "success", body
        return body["data"]

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 20 s. Safe to call again."""
        try:
            stop_group(self.proc, timeout_s=20)
        finally:
            self._log_file.close()


@dataclass
class LocustRun:
    returncode: int
    output: str
    stats: list[dict[str, str]]

    def rows(self, request_type: str | None = None) -> list[dict[str, str]]:
        return [
            r
            for r in self.stats
            if r["Name"] != "Aggregated" and (request_type is None or r["Type"] == request_type)
        ]


def run_locust(
    host: str, tmp: Path, flavours: list[str], users: int, seconds: int, max_tokens: int
) -> LocustRun:
    """A headless run of the shipped locustfile against `host` (loopback only)."""
    assert host.startswith("http://127.0.0.1:")
    prefix = tmp / "locust"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", host, "--users", str(users), "--spawn-rate", str(users),
        "--run-time", f"{seconds}s", "--stop-timeout", "30", "--csv", str(prefix),
        "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    env = {
        **os.environ,
        "TOKENQ_FLAVOURS": ",".join(flavours),
        "TOKENQ_MAX_TOKENS": str(max_tokens),
    }
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 90, check=False
    )
    with (tmp / "locust_stats.csv").open() as stats:
        rows = list(csv.DictReader(stats))
    return LocustRun(done.returncode, done.stdout + done.stderr, rows)
