"""Embeddings in the batched engine's context, with the real SmolLM2 model: pooling, batching
of inputs, interleaving with running generations, and embedding jobs through the runner."""

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from shared.events import EmbeddingsEvent, ErrorCode, ErrorEvent
from shared.job import EmbeddingJob, Flavour, GenerationJob, SamplingParams
from shared.settings import default_gguf_path
from tests.fakes import RecordingPublisher
from worker.batch_engine import BatchEngine
from worker.embedding import Chunk, MeanPool, chunks, pack
from worker.runner import JobRunner
from worker.scheduler import Scheduler
from worker.slot_engine import SlotEngine

GREEDY = SamplingParams(temperature=0.0)
TEXTS = ["The cat sat on the mat.", "Hello world", "Embeddings are vectors of numbers."]
DIMS = 576  # SmolLM2-135M's hidden size
CHUNK = 32


def make_engine(
    unified: bool, prefill_chunk: int = CHUNK, seq_ctx: int = 512, **kwargs: object
) -> BatchEngine:
    return BatchEngine(
        default_gguf_path(),
        slots=3,
        n_ctx=3 * seq_ctx,
        threads=2,
        n_gpu_layers=0,
        flash_attn=False,
        prefill_chunk=prefill_chunk,
        unified_kv=unified,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module", params=[False, True], ids=["per-slot", "unified"])
def engine(request: pytest.FixtureRequest) -> Iterator[BatchEngine]:
    engine = make_engine(request.param)
    yield engine
    engine.close()


def tokens(engine: BatchEngine, *texts: str) -> list[list[int]]:
    return [engine.text_tokens(text) for text in texts]


def embed_all(engine: BatchEngine, inputs: list[list[int]]) -> list[np.ndarray]:
    vectors: list[np.ndarray] = []
    while len(vectors) < len(inputs):
        vectors += engine.embed(inputs[len(vectors) :])
    return vectors


def test_pack_takes_what_fits_one_batch_and_the_free_sequences() -> None:
    assert pack([[1] * 10, [1] * 10, [1] * 10], sequences=8, capacity=25) == 2
    assert pack([[1] * 10, [1] * 10, [1] * 10], sequences=1, capacity=100) == 1
    assert pack([[1] * 300, [1]], sequences=8, capacity=40) == 1  # a long one goes alone


def test_chunks_run_an_input_on_into_the_next_decode() -> None:
    assert chunks([3, 5], 4) == [
        [Chunk(0, 0, 3, 0), Chunk(1, 0, 1, 3)],
        [Chunk(1, 1, 5, 0)],
    ]
    assert chunks([10], 4) == [[Chunk(0, 0, 4, 0)], [Chunk(0, 4, 8, 0)], [Chunk(0, 8, 10, 0)]]


def test_mean_pool_is_the_normalised_mean_of_all_rows() -> None:
    rows = np.array([[1.0, 0.0], [3.0, 4.0], [2.0, 2.0]], dtype=np.float32)
    pool = MeanPool.empty(2)
    pool.add(rows[:1])
    pool.add(rows[1:])
    mean = rows.mean(axis=0)
    assert np.allclose(pool.vector(), mean / np.linalg.norm(mean))


def test_inputs_embedded_together_give_unit_vectors_of_the_model_dimension(
    engine: BatchEngine,
) -> None:
    inputs = tokens(engine, *TEXTS)
    together = engine.embed(inputs)
    assert len(together) == 3  # three free slots, one batch
    for vector in together:
        assert vector.shape == (DIMS,) and np.isfinite(vector).all()
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    alone = [engine.embed([one])[0] for one in inputs]
    for a, b in zip(together, alone, strict=True):
        assert float(a @ b) > 0.99999  # batching does not change an input's vector
    # Different texts are different vectors; the same text the same vector.
    assert float(together[0] @ together[1]) < 0.99
    assert np.array_equal(engine.embed(inputs[:1])[0], engine.embed(inputs[:1])[0])


def test_an_input_longer_than_a_batch_is_pooled_over_several_decodes(engine: BatchEngine) -> None:
    long = tokens(engine, "The lighthouse keeper climbed the stairs at dusk. " * 12)[0]
    assert len(long) > 3 * CHUNK
    chunked = engine.embed([long])[0]
    wide = make_engine(unified=True, prefill_chunk=512)
    try:
        whole = wide.embed([long])[0]
    finally:
        wide.close()
    assert float(chunked @ whole) > 0.9999


def test_embedding_between_steps_leaves_running_generations_unchanged(
    engine: BatchEngine,
) -> None:
    prompt = engine.prompt_tokens(
        GenerationJob(
            model="m",
            prompt="Once upon a time",
            flavour=Flavour.OPENAI,
            deadline=time.time() + 60,
        )
    )

    def generate(interleave: bool) -> tuple[list[int], list[np.ndarray]]:
        engine.clear_cache()
        slot = engine.start(prompt, GREEDY, seed=0)
        out: list[int] = []
        logits: list[np.ndarray] = []
        try:
            while len(out) < 12:
                for sampled in engine.step():
                    out.append(sampled.token)
                    logits.append(engine.last_logits(slot).copy())
                if interleave and len(out) in (1, 5, 9):
                    engine.embed(tokens(engine, *TEXTS))  # the two free slots
        finally:
            engine.release(slot)
        return out, logits

    plain_tokens, plain_logits = generate(False)
    mixed_tokens, mixed_logits = generate(True)
    assert mixed_tokens == plain_tokens
    assert all(np.array_equal(a, b) for a, b in zip(plain_logits, mixed_logits, strict=True))


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b))  # unit vectors


def embedding_job(*inputs: str | list[int], truncate: bool = False) -> EmbeddingJob:
    return EmbeddingJob(
        model="m",
        inputs=list(inputs),
        truncate=truncate,
        flavour=Flavour.OPENAI,
        deadline=time.time() + 60,
    )


def test_embedding_jobs_run_through_the_scheduler_beside_a_generation(
    engine: BatchEngine,
) -> None:
    engine.clear_cache()
    publisher = RecordingPublisher()
    with Scheduler(engine) as scheduler:
        slot_engine = SlotEngine(scheduler)
        runner = JobRunner(slot_engine, publisher, embedder=slot_engine)
        generation = GenerationJob(
            model="m",
            prompt="1, 2, 3,",
            sampling=SamplingParams(temperature=0.0, max_tokens=40),
            flavour=Flavour.OPENAI,
            deadline=time.time() + 60,
        )
        generating = threading.Thread(
            target=lambda: JobRunner(SlotEngine(scheduler), publisher).run(generation)
        )
        generating.start()
        many = [TEXTS[i % 3] for i in range(7)]  # more inputs than free slots: several rounds
        ended = runner.run(embedding_job(*many, engine.text_tokens(TEXTS[0])))
        generating.join(timeout=120)
    assert isinstance(ended, EmbeddingsEvent)
    vectors = ended.floats()
    assert len(vectors) == 8 and all(len(v) == DIMS for v in vectors)
    # The same text, and its tokens given as ids (in a unified cache other cells than the
    # first time move the values a little; per slot they are identical).
    assert cosine(vectors[0], vectors[3]) > 0.9999 and cosine(vectors[0], vectors[7]) > 0.9999
    assert ended.usage.prompt_tokens == sum(len(engine.text_tokens(t)) for t in [*many, TEXTS[0]])
    done = [e for job_id, e in publisher.events if job_id == generation.id][-1]
    assert done.type == "done" and done.usage.completion_tokens == 40


def test_embedding_jobs_refuse_what_does_not_fit() -> None:
    engine = make_engine(unified=False, prefill_chunk=128, seq_ctx=128)
    publisher = RecordingPublisher()
    n_ctx = engine.info.n_ctx  # one slot's cells (llama.cpp rounds the context up)
    long = "word " * (n_ctx + 50)
    try:
        with Scheduler(engine) as scheduler:
            slot_engine = SlotEngine(scheduler)
            runner = JobRunner(slot_engine, publisher, embedder=slot_engine)
            too_long = runner.run(embedding_job("fine", long))
            bad_id = runner.run(embedding_job([1, 2, 10**6]))
            cut = runner.run(embedding_job(long, truncate=True))
    finally:
        engine.close()
    assert isinstance(too_long, ErrorEvent)
    assert too_long.code is ErrorCode.CONTEXT_LENGTH_EXCEEDED and "input 1" in too_long.message
    assert isinstance(bad_id, ErrorEvent) and bad_id.code is ErrorCode.INVALID_REQUEST
    assert isinstance(cut, EmbeddingsEvent) and cut.usage.prompt_tokens == n_ctx


def test_an_engine_without_embeddings_refuses_embedding_jobs() -> None:
    engine = make_engine(unified=False, seq_ctx=128, embeddings=False)
    try:
        assert engine.info.embedding_dims is None
        with Scheduler(engine) as scheduler:
            slot_engine = SlotEngine(scheduler)
            ended = JobRunner(slot_engine, RecordingPublisher(), embedder=slot_engine).run(
                embedding_job("hello")
            )
    finally:
        engine.close()
    assert isinstance(ended, ErrorEvent) and ended.code is ErrorCode.INVALID_REQUEST
