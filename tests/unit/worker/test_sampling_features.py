"""Per-sequence sampling features of the batched engine, with the real SmolLM2 model: grammar
(llama.cpp's sample-then-check, resample on rejection), logit bias, logprobs, n sequences
sharing one prompt evaluation."""

import json
import re
import time
from collections.abc import Iterator

import pytest
from llama_cpp.llama_grammar import json_schema_to_gbnf

from shared.events import ErrorCode, ErrorEvent
from shared.job import ChatMessage, Flavour, GenerationJob, SamplingParams
from shared.settings import default_gguf_path
from tests.fakes import RecordingPublisher
from worker.batch_engine import BatchEngine
from worker.engine import InvalidSamplingError
from worker.runner import JobRunner

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def engine() -> Iterator[BatchEngine]:
    engine = BatchEngine(
        default_gguf_path(),
        slots=4,
        n_ctx=2048,
        threads=2,
        n_gpu_layers=0,
        flash_attn=False,
        unified_kv=False,
    )
    yield engine
    engine.close()


def chat(engine: BatchEngine, text: str) -> list[int]:
    return engine.prompt_tokens(
        GenerationJob(
            model="m",
            messages=[ChatMessage(role="user", content=text)],
            flavour=Flavour.OPENAI,
            deadline=time.time() + 60,
        )
    )


def generate(
    engine: BatchEngine, prompt: list[int], sampling: SamplingParams, limit: int = 40
) -> tuple[bytes, list[int], bool]:
    """One sequence to its end (or `limit` tokens): its bytes, tokens, whether it ended.

    From an empty cache: a reused prefix evaluates the prompt's tail in another batch shape,
    which may flip near-tie greedy picks between runs that are compared.
    """
    engine.clear_cache()
    slot = engine.start(prompt, sampling, seed=0)
    out, tokens = b"", []
    try:
        while len(tokens) < limit:
            for sampled in engine.step():
                if sampled.end_of_generation:
                    return out, tokens, True
                out += sampled.piece
                tokens.append(sampled.token)
    finally:
        engine.release(slot)
    return out, tokens, False


def test_a_grammar_rejecting_the_free_pick_resamples_under_the_grammar(
    engine: BatchEngine,
) -> None:
    prompt = chat(engine, "Is the sky blue? Explain.")
    free, _, _ = generate(engine, prompt, SamplingParams(temperature=0.0))
    assert not free.startswith((b"yes", b"no"))  # the model would answer in a sentence ...
    before = engine.grammar_resampled
    text, _, ended = generate(
        engine, prompt, SamplingParams(temperature=0.0, grammar='root ::= "yes" | "no"')
    )
    assert text in (b"yes", b"no") and ended  # ... the grammar allows one word, then the end
    assert engine.grammar_resampled > before


def test_a_grammar_that_accepts_the_free_pick_costs_no_resample(engine: BatchEngine) -> None:
    prompt = chat(engine, "Name a colour.")
    free = generate(engine, prompt, SamplingParams(temperature=0.0), limit=20)
    before = engine.grammar_resampled
    anything = SamplingParams(temperature=0.0, grammar=r"root ::= [^\x00]*")
    assert generate(engine, prompt, anything, limit=20) == free
    assert engine.grammar_resampled == before  # every token passed the one-candidate check


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_output_under_a_json_schema_grammar_parses_and_validates(
    engine: BatchEngine, temperature: float
) -> None:
    grammar = json_schema_to_gbnf(json.dumps(PERSON))
    sampling = SamplingParams(temperature=temperature, grammar=grammar)
    text, _, ended = generate(engine, chat(engine, "Describe a person as JSON."), sampling, 80)
    assert ended  # the grammar's end lets end-of-generation through
    person = json.loads(text)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


def test_an_incomplete_grammar_bans_the_end_and_a_complete_one_forces_it(
    engine: BatchEngine,
) -> None:
    prompt = chat(engine, "Say hi.")
    # min_tokens-like: the model would end at once; the grammar wants ten letters first.
    text, _, ended = generate(
        engine, prompt, SamplingParams(temperature=0.0, grammar="root ::= [a-z]{10}")
    )
    assert ended and re.fullmatch(rb"[a-z]{10}", text)
    # Complete, with the end banned: nothing may follow, so the sequence ends anyway.
    sampling = SamplingParams(temperature=0.0, grammar='root ::= "ok"', ignore_eos=True)
    assert generate(engine, prompt, sampling, limit=10)[::2] == (b"ok", True)


@pytest.mark.parametrize(
    ("sampling", "message"),
    [
        (SamplingParams(grammar="root ::= undefined-rule"), "grammar"),
        (SamplingParams(grammar='start ::= "x"'), "grammar"),
        (SamplingParams(logit_bias={10**6: 1.0}), "logit_bias"),
    ],
)
def test_sampling_the_engine_cannot_honour_fails_the_job_not_the_worker(
    engine: BatchEngine, sampling: SamplingParams, message: str
) -> None:
    with pytest.raises(InvalidSamplingError, match=message):
        engine.start([1, 2, 3], sampling, seed=0)
    assert engine.active_slots == 0  # nothing was taken
    publisher = RecordingPublisher()
    job = GenerationJob(
        model="m",
        prompt="Hello",
        sampling=sampling,
        flavour=Flavour.OPENAI,
        deadline=time.time() + 60,
    )
    terminal = JobRunner(engine, publisher).run(job)
    assert isinstance(terminal, ErrorEvent) and terminal.code is ErrorCode.INVALID_REQUEST
    assert message in terminal.message
    # The engine still serves.
    assert generate(engine, chat(engine, "Say hi."), SamplingParams(temperature=0.0), 3)[1]
