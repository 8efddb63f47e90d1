"""An API host without the model file counts prompt tokens with the tokenizer the worker
published in Redis, as when API and workers run on different machines."""

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from openai import OpenAI

from shared import keys
from shared.job import ChatMessage
from shared.settings import default_gguf_path
from shared.tokenizer import PromptTokenizer
from tests.integration.procs import ApiProcess, Process, RedisServer

pytestmark = pytest.mark.integration

MODEL = "relocated"
QUESTION = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Name a colour."),
]


def test_the_registered_file_missing_on_the_api_host(
    spawn: Callable[..., Process], redis_server: RedisServer, tmp_path: Path
) -> None:
    served = tmp_path / "worker-host" / "model.gguf"
    served.parent.mkdir()
    shutil.copyfile(default_gguf_path(), served)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    redis = redis_server.client()
    redis.delete(keys.model_vocab(digest))  # published by this worker, not an earlier one
    spawn("worker", MODEL, "--gguf", str(served))
    # The worker keeps the file it loaded; the path it registered is gone from this host.
    served.unlink()
    assert redis.exists(keys.model_vocab(digest))

    cache = tmp_path / "api-cache"
    api = spawn("api", env={"TOKENQ_MODELS": MODEL, "TOKENQ_TOKENIZER_CACHE_DIR": str(cache)})
    assert isinstance(api, ApiProcess)
    client = OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0, timeout=120)
    response = client.chat.completions.create(
        model=MODEL,
        messages=[m.model_dump(include={"role", "content"}) for m in QUESTION],  # type: ignore[misc]
        max_tokens=4,
        temperature=0,
    )

    assert response.usage is not None
    expected = len(PromptTokenizer.load(default_gguf_path()).chat(QUESTION))
    assert response.usage.prompt_tokens == expected
    assert (cache / f"{digest}.vocab.gguf").is_file()  # counted with the fetched tokenizer
