import time

import pytest
from pydantic import ValidationError

from shared import keys
from shared.events import DoneEvent, ErrorEvent, FinishReason, TokenEvent, parse_event
from shared.job import ChatMessage, Flavour, GenerationJob
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
