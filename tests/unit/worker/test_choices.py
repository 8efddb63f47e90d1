"""n > 1 sequences of one job through the worker's real path (Scheduler, SlotEngine, JobRunner)
on a scripted batch engine, and how a sequence's logprobs travel with its text deltas."""

import time
from collections.abc import Iterator

import pytest

from shared.events import ChoiceEndEvent, DoneEvent, FinishReason, TokenEvent, TokenLogprob
from shared.job import Flavour, GenerationJob, SamplingParams
from tests.fakes import FakeBatchEngine, RecordingPublisher, script
from worker.engine import EngineBusyError
from worker.output import ChoiceOutput, JobOutput
from worker.runner import JobRunner
from worker.scheduler import Scheduler
from worker.slot_engine import SlotEngine


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    with Scheduler(FakeBatchEngine(slots=4, step_delay_s=0.001)) as running:
        yield running


def job(n: int, **sampling: object) -> GenerationJob:
    return GenerationJob(
        model="m",
        prompt="hi",
        n=n,
        sampling=SamplingParams.model_validate(sampling),
        flavour=Flavour.OPENAI,
        deadline=time.time() + 60,
    )


def run(scheduler: Scheduler, the_job: GenerationJob) -> list[object]:
    publisher = RecordingPublisher()
    JobRunner(SlotEngine(scheduler), publisher).run(the_job)
    return [event for _, event in publisher.events]


def test_n_choices_each_end_then_one_done_with_summed_usage(scheduler: Scheduler) -> None:
    events = run(scheduler, job(3, seed=1))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    ends = [e for e in events if isinstance(e, ChoiceEndEvent)]
    assert sorted({e.choice for e in tokens}) == [0, 1, 2]
    for choice in range(3):  # the fake's script: three tokens "t ", then the end
        assert "".join(e.text for e in tokens if e.choice == choice) == "t t t "
    assert sorted(e.choice for e in ends) == [0, 1, 2]
    assert all(e.finish_reason is FinishReason.STOP and e.completion_tokens == 3 for e in ends)
    # One numbering over the whole job (the API's check for lost events), the done last.
    assert [e.index for e in events[:-1]] == list(range(len(events) - 1))  # type: ignore[attr-defined]
    done = events[-1]
    assert isinstance(done, DoneEvent)
    assert done.usage.completion_tokens == 9 and done.usage.prompt_tokens == 3
    assert scheduler.running == 0  # every slot freed


def test_each_choice_has_its_own_finish(scheduler: Scheduler) -> None:
    events = run(scheduler, job(2, max_tokens=2))
    ends = [e for e in events if isinstance(e, ChoiceEndEvent)]
    assert [e.finish_reason for e in ends] == [FinishReason.LENGTH] * 2
    assert isinstance(events[-1], DoneEvent) and events[-1].usage.completion_tokens == 4


def test_one_choice_publishes_no_choice_end(scheduler: Scheduler) -> None:
    events = run(scheduler, job(1))
    assert not any(isinstance(e, ChoiceEndEvent) for e in events)


def test_n_above_the_slots_fails_the_job(scheduler: Scheduler) -> None:
    (end,) = run(scheduler, job(5))
    assert end.type == "error" and "slots" in end.message  # type: ignore[attr-defined]


def entry(text: str) -> TokenLogprob:
    return TokenLogprob(token=text, bytes=list(text.encode()), logprob=-1.0)


def test_logprobs_go_with_the_delta_that_carries_their_text() -> None:
    publisher = RecordingPublisher()
    output = ChoiceOutput(0, ["STOP"], JobOutput("j", publisher, lambda: True), logprobs=True)
    output.add(b"a", entry("a"))
    output.add(b"S", entry("S"))  # may start the stop string: held back, entry with it
    output.add(b"x", entry("x"))  # not the stop: "Sx" goes out with both entries
    output.add(b"ST", entry("ST"))
    assert output.add(b"OP", entry("OP"))  # the stop string: its tokens' entries are dropped
    deltas = [e for _, e in publisher.events if isinstance(e, TokenEvent)]
    assert [(d.text, [x.token for x in d.logprobs or []]) for d in deltas] == [
        ("a", ["a"]),
        ("Sx", ["S", "x"]),
    ]


def test_a_group_waits_for_all_its_slots_and_free_slots_counts_them(
    scheduler: Scheduler,
) -> None:
    held = [scheduler.open(script(n, 10**7), SamplingParams(), seed=0) for n in (1, 2)]
    assert scheduler.free_slots == 2
    with pytest.raises(EngineBusyError):  # 3 slots wanted, 2 free
        scheduler.open_group(script(3, 2), SamplingParams(), [0, 1, 2], timeout=0.2)
    assert scheduler.free_slots == 2  # what it gathered meanwhile was given back
    held[0].close()
    group = scheduler.open_group(script(3, 2), SamplingParams(), [0, 1, 2], timeout=5)
    assert scheduler.free_slots == 0
    assert [sampled.token for sampled in group[2]][:2] == [3000, 3001]
    for sequence in [*group, held[1]]:
        sequence.close()
    deadline = time.monotonic() + 5
    while scheduler.free_slots < 4:
        assert time.monotonic() < deadline
        time.sleep(0.01)
