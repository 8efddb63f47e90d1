import pytest

from shared.model_facts import ModelFacts, parameter_size
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


def test_a_worker_without_facts_still_registers() -> None:
    info = WorkerInfo(
        worker_id="w", model="m", n_ctx=1, backend="cpu", gguf="g", started_at=0, pid=1
    )
    assert info.facts is None
    assert isinstance(FACTS, ModelFacts)
