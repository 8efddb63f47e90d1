import time

import pytest
from pydantic import ValidationError

from shared import keys
from shared.events import DoneEvent, ErrorEvent, FinishReason, TokenEvent, parse_event
from shared.job import (
    MAX_STOP_LENGTH,
    MAX_STOP_STRINGS,
    ChatMessage,
    Flavour,
    GenerationJob,
    SamplingParams,
)
from shared.settings import Settings


def test_keys_are_namespaced_and_distinct() -> None:
    names = [
        keys.queue_name("m"),
        keys.events_channel("j"),
        keys.workers_index("m"),
        keys.worker_info("w"),
        keys.known_models(),
        keys.model_facts("d"),
    ]
    assert all(n.startswith("tokenq:") for n in names)
    assert len(set(names)) == len(names)
    assert keys.events_channel("abc").endswith("abc")


def test_job_needs_exactly_one_of_messages_and_prompt() -> None:
    common = {"model": "m", "flavour": Flavour.OPENAI, "deadline": time.time()}
    GenerationJob(prompt="x", **common)
    GenerationJob(messages=[ChatMessage(role="user", content="x")], **common)
    with pytest.raises(ValidationError):
        GenerationJob(**common)
    with pytest.raises(ValidationError):
        GenerationJob(prompt="x", messages=[ChatMessage(role="user", content="x")], **common)


def test_sampling_limits_hold_at_their_bounds() -> None:
    SamplingParams(stop=["x" * MAX_STOP_LENGTH] * MAX_STOP_STRINGS, seed=2**32 - 2, top_k=2**31 - 1)


@pytest.mark.parametrize(
    ("sampling", "loc"),
    [
        ({"stop": ["x"] * (MAX_STOP_STRINGS + 1)}, ("stop",)),
        ({"stop": ["x" * (MAX_STOP_LENGTH + 1)]}, ("stop", 0)),
        ({"stop": ["x", ""]}, ("stop", 1)),
        ({"stop": ["\ud800"]}, ("stop", 0)),
        ({"temperature": float("inf")}, ("temperature",)),
        ({"top_p": float("nan")}, ("top_p",)),
        ({"repeat_penalty": 0.0}, ("repeat_penalty",)),
        ({"seed": -1}, ("seed",)),
        ({"seed": 2**32 - 1}, ("seed",)),  # llama.cpp's "random"
        ({"top_k": 2**31}, ("top_k",)),
        ({"max_tokens": 0}, ("max_tokens",)),
    ],
)
def test_sampling_limits(sampling: dict[str, object], loc: tuple[object, ...]) -> None:
    with pytest.raises(ValidationError) as refused:
        SamplingParams.model_validate(sampling)
    assert refused.value.errors()[0]["loc"] == loc


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"prompt": ""}, ("prompt",)),
        ({"prompt": "Hi \ud800"}, ("prompt",)),
        ({"messages": []}, ("messages",)),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "\udfff"}]},
            ("messages", 1),
        ),
        ({"prompt": "x", "model": ""}, ("model",)),
    ],
)
def test_a_job_holds_text_to_evaluate(fields: dict[str, object], loc: tuple[object, ...]) -> None:
    """Never empty (llama.cpp cannot evaluate no tokens), always valid Unicode."""
    common = {"model": "m", "flavour": Flavour.OPENAI, "deadline": time.time()}
    with pytest.raises(ValidationError) as refused:
        GenerationJob.model_validate({**common, **fields})
    assert refused.value.errors()[0]["loc"] == loc


def test_job_roundtrips_through_json() -> None:
    job = GenerationJob(model="m", prompt="p", flavour=Flavour.OLLAMA, deadline=1.0)
    assert GenerationJob.model_validate_json(job.model_dump_json()) == job


def test_events_parse_by_type() -> None:
    assert isinstance(parse_event(TokenEvent(index=0, text="a").model_dump_json()), TokenEvent)
    done = parse_event(
        '{"type":"done","finish_reason":"length","usage":{"prompt_tokens":1,"completion_tokens":2},'
        '"timings":{"queued":0,"prompt_eval":0,"decode":0}}'
    )
    assert isinstance(done, DoneEvent) and done.finish_reason is FinishReason.LENGTH
    assert done.usage.total_tokens == 3
    assert isinstance(
        parse_event('{"type":"error","code":"internal_error","message":"x"}'), ErrorEvent
    )
    with pytest.raises(ValidationError):
        parse_event('{"type":"nope"}')


def test_settings_read_env_and_split_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENQ_MODELS", "a, b,,c")
    monkeypatch.setenv("TOKENQ_REDIS_URL", "redis://example:1/2")
    settings = Settings()
    assert settings.models == ["a", "b", "c"]
    assert settings.redis_url == "redis://example:1/2"
    with pytest.raises(ValidationError):
        Settings(queue_deadline_s=0)


def test_only_a_final_assistant_message_can_be_continued() -> None:
    common = {"model": "m", "flavour": Flavour.ANTHROPIC, "deadline": time.time()}
    user = ChatMessage(role="user", content="x")
    prefill = ChatMessage(role="assistant", content="y")
    GenerationJob(messages=[user, prefill], continue_final_message=True, **common)
    with pytest.raises(ValidationError):
        GenerationJob(messages=[user], continue_final_message=True, **common)
    with pytest.raises(ValidationError):
        GenerationJob(prompt="x", continue_final_message=True, **common)
