"""The programs docker-compose.yml starts besides tokenq, started directly with its files:
nginx's config test, promtool's checks, Redis with the compose service's arguments."""

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.deploy_procs import (
    ALERT_RULES,
    PROMETHEUS_CONFIG,
    prometheus_test_config,
    render_nginx,
    tool,
)
from tests.integration.procs import ROOT, RedisServer, free_port

pytestmark = pytest.mark.integration


def run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_nginx_accepts_the_template(tmp_path: Path) -> None:
    config = render_nginx(tmp_path, "api:8000", free_port())
    output = run(tool("nginx"), "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(config))
    assert "test is successful" in output


def test_promtool_accepts_the_config_and_the_rules(tmp_path: Path) -> None:
    assert "SUCCESS" in run(tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG))
    assert "SUCCESS: 6 rules found" in run(tool("promtool"), "check", "rules", str(ALERT_RULES))
    test_config = prometheus_test_config(tmp_path, "127.0.0.1:1", "127.0.0.1:2", 3)
    assert "SUCCESS" in run(tool("promtool"), "check", "config", str(test_config))


def test_redis_persists_with_the_compose_arguments(tmp_path: Path) -> None:
    """Written with the compose service's arguments, killed (no shutdown save: only the
    append-only file can bring the data back), started again on the same directory (its
    volume): the data is back."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    server = RedisServer(tmp_path, command[1:])
    server.start()
    try:
        redis = server.client()
        assert redis.config_get("appendonly") == {"appendonly": "yes"}
        redis.set("tokenq:probe", "1")
        time.sleep(0.1)
        written = [p for p in tmp_path.rglob("*.aof") if p.stat().st_size > 0]
        assert written, list(tmp_path.rglob("*"))
        server.kill()
        server.start()
        assert server.client().get("tokenq:probe") == b"1"
    finally:
        server.stop()
