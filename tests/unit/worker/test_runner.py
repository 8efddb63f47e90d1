import time

from shared.events import DoneEvent, ErrorCode, ErrorEvent, FinishReason, TokenEvent
from shared.job import ChatMessage, Flavour, GenerationJob, SamplingParams
from tests.fakes import EOS, FakeEngine, RecordingPublisher
from worker.runner import JobRunner


def job(**sampling: object) -> GenerationJob:
    return GenerationJob(
        model="m",
        messages=[ChatMessage(role="user", content="hi")],
        sampling=SamplingParams.model_validate(sampling),
        flavour=Flavour.OPENAI,
        deadline=time.time() + 60,
    )


def run(engine: FakeEngine, the_job: GenerationJob) -> list[TokenEvent | DoneEvent | ErrorEvent]:
    publisher = RecordingPublisher()
    JobRunner(engine, publisher).run(the_job)
    assert {job_id for job_id, _ in publisher.events} == {the_job.id}
    return [event for _, event in publisher.events]


def test_tokens_then_exactly_one_done_at_eos() -> None:
    events = run(FakeEngine([b"Hel", b"lo", b"!", EOS]), job())
    assert [e.type for e in events] == ["token", "token", "token", "done"]
    assert [e.index for e in events if isinstance(e, TokenEvent)] == [0, 1, 2]
    done = events[-1]
    assert isinstance(done, DoneEvent)
    assert done.finish_reason is FinishReason.STOP
    assert done.usage.completion_tokens == 3 and done.usage.prompt_tokens == 4


def test_max_tokens_ends_with_length() -> None:
    events = run(FakeEngine([b"a", b"b", b"c", b"d"]), job(max_tokens=2))
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == "ab"
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason is FinishReason.LENGTH
    assert done.usage.completion_tokens == 2


def test_stop_string_across_tokens() -> None:
    events = run(FakeEngine([b"one ", b"tw", b"o three", EOS]), job(stop=["two"]))
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == "one "
    done = events[-1]
    assert isinstance(done, DoneEvent)
    assert done.finish_reason is FinishReason.STOP_SEQUENCE and done.stop_sequence == "two"


def test_multibyte_character_split_over_tokens() -> None:
    euro = "€".encode()
    events = run(FakeEngine([euro[:2], euro[2:], EOS]), job())
    assert [e.text for e in events if isinstance(e, TokenEvent)] == ["€"]


def test_prompt_over_context_is_an_error_event() -> None:
    events = run(FakeEngine([b"x"], prompt_len=60, n_ctx=64), job(max_tokens=10))
    assert len(events) == 1
    error = events[0]
    assert isinstance(error, ErrorEvent) and error.code is ErrorCode.CONTEXT_LENGTH_EXCEEDED


def test_an_empty_prompt_is_refused_before_the_engine_starts() -> None:
    """llama.cpp cannot evaluate no tokens (it asserts); a template rendering nothing is 400."""
    engine = FakeEngine([b"x", EOS], prompt_len=0)
    events = run(engine, job())
    assert len(events) == 1
    error = events[0]
    assert isinstance(error, ErrorEvent) and error.code is ErrorCode.INVALID_REQUEST
    assert engine.started_with == []


def test_job_past_its_deadline_never_starts() -> None:
    engine = FakeEngine([b"x", EOS])
    late = job().model_copy(update={"deadline": time.time() - 1})
    events = run(engine, late)
    assert [e.type for e in events] == ["error"]
    assert engine.started_with == []


def test_engine_failure_still_ends_with_one_error_event() -> None:
    class Broken(FakeEngine):
        def step(self) -> list:  # type: ignore[type-arg]
            raise RuntimeError("boom")

    engine = Broken([b"x"])
    events = run(engine, job())
    assert [e.type for e in events] == ["error"]
    assert isinstance(events[0], ErrorEvent) and events[0].code is ErrorCode.INTERNAL
    assert engine._position is None  # the slot was released


def test_seed_is_passed_to_the_engine() -> None:
    engine = FakeEngine([EOS])
    run(engine, job(seed=42))
    assert engine.started_with[0][1] == 42
