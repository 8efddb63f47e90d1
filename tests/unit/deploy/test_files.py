"""The deploy files are exact: compose and Kubernetes commands parse with the real CLI, the
Kubernetes manifests validate against Kubernetes' schemas, KEDA watches the queue RQ really
uses, and the dashboard and its provisioning agree."""

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from typer.main import get_command

from shared import keys
from shared.cli import commands
from shared.settings import DEFAULT_MODEL, ApiSettings, WorkerSettings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
K8S = ROOT / "deploy" / "k8s"
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "tokenq.json").read_text())


def parse_tokenq(command: list[str]) -> dict[str, Any]:
    """What `tokenq <sub> ...` parses to with the real CLI; unknown options raise."""
    assert command[0] == "tokenq", command
    cli = get_command(commands())
    sub = cli.commands[command[1]]  # type: ignore[attr-defined]
    params: dict[str, Any] = sub.make_context(command[1], list(command[2:])).params
    given = {k: v for k, v in params.items() if v is not None}
    settings = {"api": ApiSettings, "worker": WorkerSettings}[command[1]]
    settings(**given)  # the values are valid settings too
    return given


def test_the_cli_parser_rejects_unknown_options() -> None:
    with pytest.raises(Exception, match="No such option"):
        parse_tokenq(["tokenq", "worker", "--metrics-prot", "9400"])


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = COMPOSE["services"]
    return found


def test_compose_commands_match_the_cli() -> None:
    commands = {
        n: s["command"] for n, s in services().items() if s.get("command", [""])[0] == "tokenq"
    }
    assert set(commands) == {"api", "worker", "worker-gpu"}
    api = parse_tokenq(commands["api"])
    assert api == {"host": "0.0.0.0", "port": 8000, "workers": 2}
    worker = parse_tokenq(commands["worker"])
    assert worker["model"] == DEFAULT_MODEL and worker["metrics_port"] == 9400
    gpu = parse_tokenq(commands["worker-gpu"])
    assert gpu["n_gpu_layers"] == -1 and gpu["metrics_port"] == 9400


def test_compose_services() -> None:
    s = services()
    assert set(s) == {"redis", "api", "nginx", "worker", "worker-gpu", "prometheus", "grafana"}
    assert all("healthcheck" in service for service in s.values()), "a service lacks one"
    assert s["redis"]["command"][s["redis"]["command"].index("--appendonly") + 1] == "yes"
    assert s["api"]["deploy"]["replicas"] == 2
    assert s["nginx"]["environment"]["TOKENQ_API_UPSTREAM"] == "api:8000"
    assert s["worker-gpu"]["profiles"] == ["gpu"]
    (device,) = s["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "worker-gpu" not in s["worker"].get("profiles", [])


def test_compose_mounts_exist() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)
    build_files = {s["build"]["dockerfile"] for s in services().values() if "build" in s}
    assert build_files == {"deploy/Dockerfile", "deploy/Dockerfile.cuda"}
    assert all((ROOT / f).is_file() for f in build_files)


def k8s_documents() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_documents() if doc["kind"] == kind]


def test_k8s_manifests_validate_against_kubernetes_schemas() -> None:
    for doc in k8s_documents():
        if doc["apiVersion"].startswith(("keda.sh/", "kustomize.config.k8s.io/")):
            continue  # not Kubernetes' own kinds; checked below
        kubernetes_validate.validate(doc, latest_version(), strict=True)


def test_k8s_validation_catches_a_typo() -> None:
    (api,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "tokenq-api"]
    api["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, latest_version(), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = by_kind("Kustomization")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    return found  # type: ignore[no-any-return]


def test_k8s_api_probes_and_command() -> None:
    (api,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "tokenq-api"]
    c = container(api)
    assert parse_tokenq(c["command"])["port"] == 8000
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (service,) = [s for s in by_kind("Service") if s["metadata"]["name"] == "tokenq-api"]
    assert service["spec"]["selector"] == api["spec"]["template"]["metadata"]["labels"]


def test_every_model_has_a_worker_deployment_scaled_by_keda_on_its_queue() -> None:
    workers = {
        d["metadata"]["labels"]["tokenq/model"]: d
        for d in by_kind("Deployment")
        if d["metadata"]["name"].startswith("tokenq-worker-")
    }
    assert DEFAULT_MODEL in workers
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in by_kind("ScaledObject")}
    for model, deployment in workers.items():
        c = container(deployment)
        args = parse_tokenq(c["command"])
        assert args["model"] == model
        port = args["metrics_port"]
        assert {p["containerPort"] for p in c["ports"]} == {port}
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        scaler = scaled[deployment["metadata"]["name"]]
        assert scaler["apiVersion"] == "keda.sh/v1alpha1"
        assert scaler["spec"]["minReplicaCount"] >= 1  # see the comment in the manifest
        triggers = scaler["spec"]["triggers"]
        assert [t["metadata"]["listName"] for t in triggers] == [
            keys.rq_queue_key(model),
            keys.rq_queue_key(model, batch=True),
        ]
        for trigger in triggers:
            assert trigger["type"] == "redis"
            assert int(trigger["metadata"]["listLength"]) >= 1


def test_dashboard_uses_the_provisioned_datasource() -> None:
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "tokenq.yml").read_text())[
        "providers"
    ]
    grafana = services()["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in grafana
    panels = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]
            assert "tokenq_" in target["expr"]


def test_dashboard_covers_what_operators_watch() -> None:
    exprs = " ".join(t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", []))
    for metric in (
        "tokenq_num_requests_waiting",
        "tokenq_num_requests_running",
        "tokenq_request_rejections_total",
        "tokenq_time_to_first_token_seconds_bucket",
        "tokenq_inter_token_latency_seconds_bucket",
        "tokenq_generation_tokens_total",
        "tokenq_workers_live",
        "tokenq_worker_busy_seconds_total",
    ):
        assert metric in exprs, metric
    # Queue state is the same on every replica: never summed over them.
    assert "sum by (model) (tokenq_num_requests" not in exprs
    assert "max by (model) (tokenq_num_requests_waiting" in exprs


def test_nginx_is_configured_for_streams() -> None:
    template = (ROOT / "deploy" / "nginx" / "templates" / "default.conf.template").read_text()
    directives = {line.strip().rstrip(";") for line in template.splitlines()}
    assert {"proxy_buffering off", "proxy_cache off", "gzip off"} <= directives
    timeouts = [d.split() for d in directives if d.startswith(("proxy_read", "send_timeout"))]
    assert len(timeouts) == 2 and all(int(t[1].rstrip("s")) >= 600 for t in timeouts)
    assert "proxy_set_header X-Request-ID $tokenq_request_id" in directives
