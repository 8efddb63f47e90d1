"""The scheduler thread over a fake multi-slot engine: admission mid-flight, cancellation,
errors, and every token handed out once, in order, to the right consumer."""

import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from shared.events import DoneEvent, ErrorCode, ErrorEvent, FinishReason
from shared.job import ChatMessage, Flavour, GenerationJob, SamplingParams
from tests.fakes import EOS, FakeBatchEngine, RecordingPublisher, expected_tokens, script
from worker.engine import EngineBusyError, KVCacheFullError
from worker.runner import JobRunner
from worker.scheduler import (
    EndReason,
    EngineStepError,
    Scheduler,
    SchedulerStoppedError,
    Sequence,
)
from worker.slot_engine import SlotEngine

SAMPLING = SamplingParams()


@pytest.fixture
def engine() -> FakeBatchEngine:
    return FakeBatchEngine(slots=4, step_delay_s=0.001)


@pytest.fixture
def scheduler(engine: FakeBatchEngine) -> Iterator[Scheduler]:
    with Scheduler(engine) as running:
        yield running
    assert not running._thread.is_alive()


def tokens(sequence: Sequence) -> list[int]:
    """Every token up to and without the end of generation; asserts it came last."""
    out = [sampled.token for sampled in sequence]
    assert out and out[-1] == EOS
    return out[:-1]


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_sequence_opened_mid_flight_gets_tokens_before_the_first_ends(
    scheduler: Scheduler, engine: FakeBatchEngine
) -> None:
    first = scheduler.open(script(1, 300), SAMPLING, seed=0)
    head = [next(first).token for _ in range(5)]
    second = scheduler.open(script(2, 5), SAMPLING, seed=0)
    assert tokens(second) == expected_tokens(script(2, 5))
    assert head + tokens(first) == expected_tokens(script(1, 300))
    steps_of = {token: step for step, _, token in engine.emitted}
    assert steps_of[2000] < max(step for step, slot, _ in engine.emitted if slot == first.slot)
    assert engine.max_batch == 2
    assert first.end_reason is second.end_reason is EndReason.END_OF_GENERATION


def test_a_closed_sequence_is_freed_at_the_next_step(
    scheduler: Scheduler, engine: FakeBatchEngine
) -> None:
    sequence = scheduler.open(script(1, 10_000), SAMPLING, seed=0)
    for _ in range(3):
        next(sequence)
    sequence.close()
    steps_at_close = engine.steps
    assert list(sequence) == []  # nothing more after close
    wait_for(lambda: bool(engine.released))
    ((slot, steps_at_release),) = engine.released
    assert slot == sequence.slot and steps_at_release <= steps_at_close + 1
    assert sequence.end_reason is EndReason.CLOSED


def test_many_consumers_get_every_token_once_in_order(engine: FakeBatchEngine) -> None:
    rng = random.Random(7)
    plans = [
        [script(thread * 10 + n, rng.randint(1, 40), rng.randint(0, 3)) for n in range(4)]
        for thread in range(8)
    ]
    got: dict[int, list[list[int]]] = {}
    sequences: list[Sequence] = []

    def consumer(thread: int) -> None:
        got[thread] = []
        for prompt in plans[thread]:
            sequence = shared.open(prompt, SAMPLING, seed=0, timeout=10)
            sequences.append(sequence)
            got[thread].append(tokens(sequence))

    with Scheduler(engine) as shared:
        threads = [threading.Thread(target=consumer, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        wait_for(lambda: shared.running == 0)
    assert got == {t: [expected_tokens(p) for p in plans[t]] for t in range(8)}
    assert len(engine.started) == len(engine.released) == 32
    assert all(s.end_reason is EndReason.END_OF_GENERATION for s in sequences)
    assert engine.max_batch == 4  # 8 consumers on 4 slots: batches were full


def test_a_failed_step_reaches_every_sequence_in_it(
    scheduler: Scheduler, engine: FakeBatchEngine
) -> None:
    running = [scheduler.open(script(n, 10_000), SAMPLING, seed=0) for n in (1, 2)]
    for sequence in running:
        next(sequence)
    engine.fail_next = RuntimeError("boom")
    for sequence in running:
        with pytest.raises(EngineStepError) as failed:
            list(sequence)
        assert isinstance(failed.value.__cause__, RuntimeError)
        assert sequence.end_reason is EndReason.ERROR
    after = scheduler.open(script(3, 4), SAMPLING, seed=0)  # the thread lives on
    assert tokens(after) == expected_tokens(script(3, 4))
    wait_for(lambda: len(engine.released) == 3)


def test_a_full_context_ends_only_the_sequences_named(
    scheduler: Scheduler, engine: FakeBatchEngine
) -> None:
    keep = scheduler.open(script(1, 200), SAMPLING, seed=0)
    drop = scheduler.open(script(2, 10_000), SAMPLING, seed=0)
    head = [next(keep).token for _ in range(3)]
    next(drop)
    assert drop.slot is not None
    engine.full_next = (drop.slot,)
    with pytest.raises(KVCacheFullError) as full:
        list(drop)
    assert full.value.slots == (drop.slot,)
    assert head + tokens(keep) == expected_tokens(script(1, 200))


def test_open_waits_for_a_free_slot_then_is_busy() -> None:
    engine = FakeBatchEngine(slots=2, step_delay_s=0.001)
    with Scheduler(engine) as scheduler:
        held = [scheduler.open(script(n, 10_000), SAMPLING, seed=0) for n in (1, 2)]
        with pytest.raises(EngineBusyError):
            scheduler.open(script(3, 1), SAMPLING, seed=0, timeout=0)
        with pytest.raises(EngineBusyError):
            scheduler.open(script(3, 1), SAMPLING, seed=0, timeout=0.2)
        opened: list[Sequence] = []
        waiter = threading.Thread(
            target=lambda: opened.append(scheduler.open(script(3, 2), SAMPLING, seed=0))
        )
        waiter.start()
        time.sleep(0.05)
        assert not opened  # still waiting
        held[0].close()
        waiter.join(timeout=5)
        assert tokens(opened[0]) == expected_tokens(script(3, 2))
        held[1].close()


def test_a_refused_start_reaches_its_consumer(scheduler: Scheduler) -> None:
    refused = scheduler.open(script(-1, 1), SAMPLING, seed=0)
    with pytest.raises(ValueError, match="refused"):
        refused.wait_started(timeout=5)
    with pytest.raises(ValueError, match="refused"):
        list(refused)
    # Its slot was given back: every slot can still be taken.
    sequences = [scheduler.open(script(n, 2), SAMPLING, seed=0, timeout=0) for n in range(4)]
    assert [tokens(s) for s in sequences] == [expected_tokens(script(n, 2)) for n in range(4)]


def test_stop_ends_running_sequences_and_refuses_new_ones(engine: FakeBatchEngine) -> None:
    scheduler = Scheduler(engine)
    scheduler.start()
    running = scheduler.open(script(1, 10_000), SAMPLING, seed=0)
    next(running)
    scheduler.stop(timeout=5)
    with pytest.raises(SchedulerStoppedError):
        list(running)
    with pytest.raises(SchedulerStoppedError):
        scheduler.open(script(2, 1), SAMPLING, seed=0)
    assert [slot for slot, _ in engine.released] == [running.slot]


def test_an_idle_scheduler_does_not_step(scheduler: Scheduler, engine: FakeBatchEngine) -> None:
    time.sleep(0.05)
    assert engine.steps == 0


def job(max_tokens: int | None = None) -> GenerationJob:
    return GenerationJob(
        model="m",
        messages=[ChatMessage(role="user", content="hi")],
        sampling=SamplingParams(max_tokens=max_tokens),
        flavour=Flavour.OPENAI,
        deadline=time.time() + 60,
    )


def test_job_runners_run_on_slot_engines(scheduler: Scheduler, engine: FakeBatchEngine) -> None:
    publisher = RecordingPublisher()
    ends: list[object] = []
    jobs = [job(), job(max_tokens=2)]

    def slot_thread(the_job: GenerationJob) -> None:
        ends.append(JobRunner(SlotEngine(scheduler), publisher).run(the_job))

    threads = [threading.Thread(target=slot_thread, args=(j,)) for j in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    done = {end.finish_reason for end in ends if isinstance(end, DoneEvent)}
    assert done == {FinishReason.STOP, FinishReason.LENGTH}  # 3 tokens then the end; 2 of 3
    wait_for(lambda: len(engine.released) == 2)


def test_a_full_context_is_an_error_event_for_its_job(
    scheduler: Scheduler, engine: FakeBatchEngine
) -> None:
    slot_engine = SlotEngine(scheduler)
    engine.full_next = (0,)
    publisher = RecordingPublisher()
    end = JobRunner(slot_engine, publisher).run(job())
    assert isinstance(end, ErrorEvent) and end.code is ErrorCode.BACKEND_UNAVAILABLE
    wait_for(lambda: len(engine.released) == 1)
