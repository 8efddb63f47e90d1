"""Prompt token counts on the API side, with the model's own template and vocabulary.

Each model's tokenizer is loaded once per process (llama.cpp `vocab_only`: the vocabulary and
metadata of the GGUF a live worker registered, no weights) and reused.
"""

from pathlib import Path

import anyio
from redis.asyncio import Redis as AsyncRedis

from api.errors import NoWorkerError
from shared import registry
from shared.job import GenerationJob
from shared.tokenizer import PromptTokenizer


class Tokenizers:
    def __init__(self, redis: AsyncRedis) -> None:
        self._redis = redis
        self._loaded: dict[str, PromptTokenizer] = {}
        self._lock = anyio.Lock()

    async def get(self, model: str) -> PromptTokenizer:
        if model in self._loaded:
            return self._loaded[model]
        async with self._lock:
            if model not in self._loaded:
                workers = await registry.live_workers(self._redis, model)
                if not workers:
                    raise NoWorkerError(f"no worker is serving the model '{model}' right now")
                gguf = Path(workers[0].gguf)
                self._loaded[model] = await anyio.to_thread.run_sync(PromptTokenizer.load, gguf)
        return self._loaded[model]

    async def count(self, job: GenerationJob) -> int:
        """How many tokens the job's prompt is, exactly as its worker will count it."""
        tokenizer = await self.get(job.model)
        return len(
            await anyio.to_thread.run_sync(
                tokenizer.tokens, job.messages, job.prompt, job.continue_final_message
            )
        )
