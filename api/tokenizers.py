"""Prompt token counts on the API side, with the model's own template and vocabulary.

Each model's tokenizer is loaded once per process (llama.cpp `vocab_only`: the vocabulary and
metadata, no weights) and reused. It is loaded from the GGUF a live worker registered when
that file is on this host (the same path, the same size); otherwise from the vocab-only GGUF
the worker published in Redis under the file's sha256 (shared/vocab.py), copied to a local
cache file once. So API hosts need not have the model files.
"""

import logging
import os
import tempfile
from pathlib import Path
from typing import cast

import anyio
from redis.asyncio import Redis as AsyncRedis

from api.errors import BackendUnavailableError, ContextLengthExceededError, NoWorkerError
from shared import keys, registry
from shared.job import GenerationJob
from shared.registry import WorkerInfo
from shared.tokenizer import PromptTokenizer

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Where fetched vocab-only GGUFs are kept when no cache directory is configured."""
    return Path(tempfile.gettempdir()) / "tokenq-vocab"


class Tokenizers:
    def __init__(self, redis: AsyncRedis, cache_dir: Path | None = None) -> None:
        self._redis = redis
        self._cache_dir = cache_dir or default_cache_dir()
        self._loaded: dict[str, PromptTokenizer] = {}
        self._lock = anyio.Lock()

    async def get(self, model: str) -> PromptTokenizer:
        """The model's tokenizer; 503 when no worker serves it or its vocabulary is nowhere."""
        if model in self._loaded:
            return self._loaded[model]
        async with self._lock:
            if model not in self._loaded:
                workers = await registry.live_workers(self._redis, model)
                if not workers:
                    raise NoWorkerError(f"no worker is serving the model '{model}' right now")
                self._loaded[model] = await self._load(model, workers)
        return self._loaded[model]

    async def n_vocab(self, model: str) -> int:
        """The size of the model's vocabulary (token ids are below it)."""
        return (await self.get(model)).n_vocab

    async def count(self, job: GenerationJob, n_ctx: int | None = None) -> int:
        """How many tokens the job's prompt is, exactly as its worker will count it.

        With `n_ctx`, a prompt whose length alone shows it leaves no room in a context of
        `n_ctx` tokens is refused (400) without being tokenized.
        """
        tokenizer = await self.get(job.model)
        return await anyio.to_thread.run_sync(_count, tokenizer, job, n_ctx)

    async def tokens(self, job: GenerationJob) -> list[int]:
        """The job's prompt as the tokens its worker will evaluate."""
        tokenizer = await self.get(job.model)
        rendered = tokenizer.render(job.messages, job.prompt, job.continue_final_message)
        return await anyio.to_thread.run_sync(tokenizer.tokenize, rendered)

    async def _load(self, model: str, workers: list[WorkerInfo]) -> PromptTokenizer:
        try:
            path = await self._locate(workers)
            if path is not None:
                log.info("model %s: loading its tokenizer from %s", model, path)
                return await anyio.to_thread.run_sync(PromptTokenizer.load, path)
            log.warning(
                "model %s: no tokenizer: %s is not on this host (or differs in size) and no "
                "worker published its vocabulary in Redis",
                model,
                ", ".join(sorted({w.gguf for w in workers})),
            )
            reason = "its model file is not on this host and no worker published its vocabulary"
        except (OSError, ValueError) as exc:  # the cache is not writable, llama.cpp refused
            log.warning("model %s: could not load its tokenizer: %s", model, exc)
            reason = str(exc)
        raise BackendUnavailableError(
            f"the tokenizer of the model '{model}' could not be obtained ({reason})"
        )

    async def _locate(self, workers: list[WorkerInfo]) -> Path | None:
        """A GGUF with the model's vocabulary: a worker's file if it is here, else the
        vocab-only GGUF a worker published; None if neither is."""
        for worker in workers:
            if _is_here(worker):
                return Path(worker.gguf)
        for worker in workers:
            if worker.facts is not None:
                fetched = await self._fetch(worker.facts.digest)
                if fetched is not None:
                    return fetched
        return None

    async def _fetch(self, digest: str) -> Path | None:
        """The vocab-only GGUF of the file with this sha256, in the cache; None if unpublished."""
        path = self._cache_dir / f"{digest}.vocab.gguf"
        if path.exists():  # fetched before, by this process or another one on this host
            return path
        data = cast(bytes | None, await self._redis.get(keys.model_vocab(digest)))
        if data is None:
            return None
        await anyio.to_thread.run_sync(_write_whole, path, data)
        return path


def _is_here(worker: WorkerInfo) -> bool:
    """Whether the file the worker registered is on this host: it exists with the same size
    (where the worker registered its size), not a different file under the same name."""
    try:
        size = Path(worker.gguf).stat().st_size
    except OSError:
        return False
    return worker.facts is None or size == worker.facts.size


def _write_whole(path: Path, data: bytes) -> None:
    """Write `path` so no reader ever sees part of it (API processes on one host share it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as part:
        try:
            part.write(data)
            part.close()
            os.replace(part.name, path)
        except BaseException:
            Path(part.name).unlink(missing_ok=True)
            raise


def _count(tokenizer: PromptTokenizer, job: GenerationJob, n_ctx: int | None) -> int:
    rendered = tokenizer.render_job(job)
    if n_ctx is not None:
        least = tokenizer.min_tokens(rendered)
        # A prompt of n_ctx tokens is refused too: not one token could be generated.
        if least >= n_ctx:
            raise ContextLengthExceededError(
                f"the context is {n_ctx} tokens; the prompt has at least {least} "
                f"({len(rendered.text)} bytes of text)",
                param="prompt" if job.prompt is not None else "messages",
            )
    return len(tokenizer.tokenize(rendered))
