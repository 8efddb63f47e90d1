"""The prompt format, with the real SmolLM2 vocabulary and chat template (vocab-only load)."""

import pytest

from shared.job import ChatMessage
from shared.settings import default_gguf_path
from shared.tokenizer import PromptTokenizer

QUESTION = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Name a colour."),
]


@pytest.fixture(scope="module")
def tokenizer() -> PromptTokenizer:
    return PromptTokenizer.load(default_gguf_path())


def text(tokenizer: PromptTokenizer, tokens: list[int]) -> str:
    return tokenizer._llama.detokenize(tokens, special=True).decode()


def test_chat_ends_with_the_open_assistant_turn(tokenizer: PromptTokenizer) -> None:
    assert text(tokenizer, tokenizer.chat(QUESTION)).endswith(
        "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_continued_final_message_is_left_open(tokenizer: PromptTokenizer) -> None:
    prefill = ChatMessage(role="assistant", content="The colour is")
    continued = tokenizer.chat([*QUESTION, prefill], continue_final=True)
    assert text(tokenizer, continued) == text(tokenizer, tokenizer.chat(QUESTION)) + "The colour is"
    closed = tokenizer.chat([*QUESTION, prefill])
    assert text(tokenizer, closed).endswith("The colour is<|im_end|>\n<|im_start|>assistant\n")


def test_an_empty_prefill_is_the_plain_assistant_turn(tokenizer: PromptTokenizer) -> None:
    empty = ChatMessage(role="assistant", content="")
    assert tokenizer.chat([*QUESTION, empty], continue_final=True) == tokenizer.chat(QUESTION)


def test_tokens_passes_the_flag(tokenizer: PromptTokenizer) -> None:
    prefill = [*QUESTION, ChatMessage(role="assistant", content="Red")]
    assert tokenizer.tokens(prefill, None, True) == tokenizer.chat(prefill, True)
    assert tokenizer.tokens(None, "raw text") == tokenizer.raw("raw text")


@pytest.mark.parametrize(
    "prompt",
    ["", "Name a colour.", "#" * 800, "\n" + " " * 80, "naïve café ☕ 𝄞 世界" * 20, " \t\n" * 100],
)
def test_min_tokens_bounds_the_count_from_below(tokenizer: PromptTokenizer, prompt: str) -> None:
    for messages, raw in (([ChatMessage(role="user", content=prompt)], None), (None, prompt)):
        rendered = tokenizer.render(messages, raw)
        assert tokenizer.min_tokens(rendered) <= len(tokenizer.tokenize(rendered))


def test_min_tokens_is_tight_for_the_longest_tokens(tokenizer: PromptTokenizer) -> None:
    """SmolLM2's longest token is a newline and 80 spaces: 81 bytes."""
    text = ("\n" + " " * 80) * 50
    rendered = tokenizer.render(None, text)
    # SmolLM2 adds no BOS token.
    assert tokenizer.min_tokens(rendered) == 50 == len(tokenizer.tokenize(rendered))
