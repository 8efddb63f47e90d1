"""The three flavours on one job: same prompt, same usage and, greedy, the same text."""

import ollama
import pytest
from anthropic import Anthropic
from openai import OpenAI

from shared.settings import DEFAULT_MODEL

pytestmark = pytest.mark.integration

SYSTEM = "You are a terse assistant."
QUESTION = "Which planet is known as the red planet?"
MAX_TOKENS = 12


def test_usage_and_greedy_text_are_identical_across_flavours(
    openai_client: OpenAI, anthropic_client: Anthropic, ollama_client: ollama.Client
) -> None:
    openai = openai_client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    anthropic = anthropic_client.messages.create(
        model=DEFAULT_MODEL,
        system=SYSTEM,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=MAX_TOKENS,
        extra_body={"temperature": 0},
    )
    options = {"num_predict": MAX_TOKENS, "temperature": 0, "repeat_penalty": 1.0}
    chat = ollama_client.chat(
        model=DEFAULT_MODEL,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        options=options,
    )
    generated = ollama_client.generate(
        model=DEFAULT_MODEL, system=SYSTEM, prompt=QUESTION, options=options
    )
    assert openai.usage is not None
    prompts = {
        openai.usage.prompt_tokens,
        anthropic.usage.input_tokens,
        chat.prompt_eval_count,
        generated.prompt_eval_count,
    }
    outputs = {
        openai.usage.completion_tokens,
        anthropic.usage.output_tokens,
        chat.eval_count,
        generated.eval_count,
    }
    assert len(prompts) == 1 and len(outputs) == 1, (prompts, outputs)
    counted = anthropic_client.messages.count_tokens(
        model=DEFAULT_MODEL, system=SYSTEM, messages=[{"role": "user", "content": QUESTION}]
    )
    assert prompts == {counted.input_tokens}
    text = openai.choices[0].message.content
    assert text == anthropic.content[0].text == chat.message.content == generated.response  # type: ignore[union-attr]
