"""Workers take a model's interactive jobs first, until a batch job has waited past the bound."""

import time
from typing import cast

import fakeredis

from shared.job import ChatMessage, Flavour, GenerationJob, Priority
from shared.lifecycle.admission import admit
from shared.queues import model_queues
from shared.settings import Settings
from worker.rq_worker import BatchAging, ModelWorker
from worker.runner import JobRunner

MODEL = "m"


def job(priority: Priority, waited_s: float = 0.0) -> GenerationJob:
    # The queue deadline is enqueue time + queue_deadline_s: a job that "waited" has an earlier one.
    return GenerationJob(
        model=MODEL,
        messages=[ChatMessage(role="user", content="hi")],
        flavour=Flavour.OPENAI,
        deadline=time.time() + Settings().queue_deadline_s - waited_s,
        priority=priority,
    )


def taken(redis: fakeredis.FakeRedis, max_wait_s: float) -> list[str]:
    aging = BatchAging(MODEL, Settings().queue_deadline_s, max_wait_s)
    worker = ModelWorker(cast(JobRunner, None), model_queues(redis, MODEL), aging=aging)
    order = []
    while (found := worker.dequeue_job_and_maintain_ttl(None)) is not None:
        order.append(GenerationJob.model_validate(found[0].args[0]).priority.value)
    return order


def test_interactive_jobs_pass_waiting_batch_jobs() -> None:
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    for priority in [Priority.BATCH, Priority.BATCH, Priority.INTERACTIVE]:
        assert admit(redis, job(priority, waited_s=1), Settings()) is None
    assert taken(redis, max_wait_s=10) == ["interactive", "batch", "batch"]


def test_a_batch_job_waiting_past_the_bound_goes_first() -> None:
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    assert admit(redis, job(Priority.BATCH, waited_s=11), Settings()) is None
    assert admit(redis, job(Priority.BATCH, waited_s=1), Settings()) is None
    for _ in range(2):
        assert admit(redis, job(Priority.INTERACTIVE), Settings()) is None
    # The overdue batch job first; the next batch job has not waited long: interactive ones.
    assert taken(redis, max_wait_s=10) == ["batch", "interactive", "interactive", "batch"]
