import hashlib
from pathlib import Path

import fakeredis
import gguf
import numpy as np
import pytest

from shared import registry
from shared.model_facts import ModelFacts, describe, parameter_size, read_facts
from shared.registry import WorkerInfo
from tests.unit.api.harness import FACTS


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (134_515_008, "134.52M"),
        (8_030_261_248, "8.0B"),
        (7_000_000_000, "7B"),
        (360_000_000, "360M"),
        (22_000, "22K"),
        (900, "900"),
    ],
)
def test_parameter_size_is_printed_as_ollama_prints_it(count: int, shown: str) -> None:
    assert parameter_size(count) == shown


def test_facts_survive_the_registry_round_trip_with_their_types() -> None:
    info = WorkerInfo(
        worker_id="w", model="m", n_ctx=1, backend="cpu", gguf="g", started_at=0, pid=1, facts=FACTS
    )
    again = WorkerInfo.model_validate_json(info.model_dump_json())
    assert again.facts == FACTS
    assert again.facts is not None
    values = again.facts.metadata
    assert isinstance(values["general.file_type"], int)
    assert isinstance(values["llama.attention.layer_norm_rms_epsilon"], float)
    assert values["tokenizer.ggml.add_bos_token"] is False
    assert again.facts.chat_template == FACTS.metadata["tokenizer.chat_template"]


async def test_a_worker_without_facts_still_registers() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    info = WorkerInfo(
        worker_id="w", model="m", n_ctx=1, backend="cpu", gguf="g", started_at=0, pid=1
    )
    assert info.facts is None
    registry.heartbeat(redis, info, ttl_s=60)
    # Every reader of the registry sees it, facts and all (none).
    assert registry.live_workers_now(redis, "m") == [info]
    assert await registry.live_workers(fakeredis.FakeAsyncRedis(server=server), "m") == [info]
    assert await registry.registered_models(fakeredis.FakeAsyncRedis(server=server)) == {"m"}


def write_gguf(path: Path) -> Path:
    """A small GGUF file: a few typed keys, a long array, two tensors."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    writer.add_uint32("llama.context_length", 2048)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_string("tokenizer.chat_template", "{{ messages }}")
    writer.add_array("general.languages", ["en", "fr"])
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(100)])
    writer.add_tensor("a", np.zeros((4, 8), dtype=np.float32))
    writer.add_tensor("b", np.zeros(10, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_read_facts_from_a_gguf_file(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    facts = read_facts(path)
    assert facts.size == path.stat().st_size
    assert facts.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (facts.architecture, facts.file_type, facts.parameter_count) == ("llama", "Q4_K_M", 42)
    assert facts.metadata["llama.context_length"] == 2048
    assert facts.metadata["llama.attention.layer_norm_rms_epsilon"] == 1e-05
    assert facts.metadata["tokenizer.ggml.add_bos_token"] is True
    assert facts.metadata["general.languages"] == ["en", "fr"]
    assert facts.metadata["tokenizer.ggml.tokens"] == []  # too long to register
    assert facts.chat_template == "{{ messages }}"
    assert not any(key.startswith("GGUF.") for key in facts.metadata)


def test_describe_reads_a_content_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    redis = fakeredis.FakeRedis()
    first = describe(redis, write_gguf(tmp_path / "a.gguf"))
    copy = tmp_path / "b.gguf"
    copy.write_bytes((tmp_path / "a.gguf").read_bytes())

    def unread(*_args: object) -> ModelFacts:
        raise AssertionError("read again")

    monkeypatch.setattr("shared.model_facts.read_facts", unread)
    again = describe(redis, copy)
    assert again.model_dump(exclude={"modified_at"}) == first.model_dump(exclude={"modified_at"})
    assert again.modified_at == copy.stat().st_mtime
