"""A model's own prompt format: the GGUF's chat template, then its tokenizer.

The worker and the API count prompt tokens with this same code, so a count the API gives
before enqueueing equals the usage the worker reports. On the API side it loads the GGUF's
vocabulary only (llama.cpp `vocab_only`), a few MB and a fraction of a second, from the
served file or from the vocab-only GGUF its worker published (shared/vocab.py).
"""

import ctypes
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp.llama_chat_format import ChatFormatterResponse, Jinja2ChatFormatter

from shared.job import ChatMessage, GenerationJob, Tool
from shared.tool_prompt import (
    generic_messages,
    has_tool_section,
    template_messages,
    template_tools,
)

_MARKER = "\u2063tokenq-final-message\u2063"  # INVISIBLE SEPARATOR: not in real text

# Vocabularies whose tokens spell the text back byte for byte: every byte of a prompt is in
# the piece of one of its tokens (an SPM space prefix only adds one). WordPiece and Unigram
# normalize text (drop or fold whitespace), so a prompt's bytes bound nothing there.
_SPELLING_VOCABS = (llama_cpp.LLAMA_VOCAB_TYPE_SPM, llama_cpp.LLAMA_VOCAB_TYPE_BPE)
_STRIPS = llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP | llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP
# A character unknown to the vocabulary (up to 4 bytes of UTF-8) becomes one unknown token,
# whose piece may be shorter.
_LONGEST_CHARACTER = 4
_ASCII_SPACE = b" \t\n\v\f\r"  # what llama.cpp's isspace() strips next to such tokens


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt as the tokenizer takes it: its text and how to tokenize that text."""

    text: bytes
    add_bos: bool
    special: bool  # text of special tokens (a chat template's markup) becomes those tokens


@dataclass(frozen=True)
class _TokenSpan:
    """What one token of a vocabulary can stand for, measured once per loaded vocabulary."""

    longest: int  # bytes of text; 0: this vocabulary gives no bound
    strips: bool  # some special token swallows the whitespace next to it


class PromptTokenizer:
    def __init__(self, llama: llama_cpp.Llama) -> None:
        self._llama = llama
        template = llama.metadata.get("tokenizer.chat_template")
        if template is None:
            raise ValueError("the GGUF has no chat template (tokenizer.chat_template)")
        model = llama._model
        eos, bos = model.token_eos(), model.token_bos()
        eos_token = model.token_get_text(eos) if eos != -1 else ""
        bos_token = model.token_get_text(bos) if bos != -1 else ""
        self._native_tools = has_tool_section(template)
        self._template = Jinja2ChatFormatter(template, eos_token, bos_token)
        # Every turn closed, for continuing the final one (see `_continued`).
        self._closed = Jinja2ChatFormatter(
            template, eos_token, bos_token, add_generation_prompt=False
        )

    @classmethod
    def load(cls, gguf: Path) -> "PromptTokenizer":
        """Vocabulary and metadata only, no weights."""
        return cls(llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False))

    def chat(self, messages: list[ChatMessage], continue_final: bool = False) -> list[int]:
        return self.tokenize(self._render_chat(messages, continue_final, []))

    def raw(self, prompt: str) -> list[int]:
        return self.tokenize(_render_raw(prompt))

    def tokens(
        self,
        messages: list[ChatMessage] | None,
        prompt: str | None,
        continue_final: bool = False,
        tools: list[Tool] | None = None,
    ) -> list[int]:
        return self.tokenize(self.render(messages, prompt, continue_final, tools))

    def job_tokens(self, job: GenerationJob) -> list[int]:
        """The job's prompt as its worker evaluates it and the API counts it."""
        return self.tokenize(self.render_job(job))

    def render_job(self, job: GenerationJob) -> RenderedPrompt:
        """The job's prompt text: its messages with the tools it offers, or its raw prompt."""
        tools = job.tools if job.offers_tools else None
        return self.render(job.messages, job.prompt, job.continue_final_message, tools)

    def render(
        self,
        messages: list[ChatMessage] | None,
        prompt: str | None,
        continue_final: bool = False,
        tools: list[Tool] | None = None,
    ) -> RenderedPrompt:
        """The text to tokenize: the messages in the chat template, or the raw prompt.

        Tools and tool turns go through the template where it has a tool section, else
        through the generic tool prompt (shared/tool_prompt.py).
        """
        if messages is not None:
            return self._render_chat(messages, continue_final, tools or [])
        return _render_raw(prompt or "")

    def tokenize(self, rendered: RenderedPrompt) -> list[int]:
        return self._llama.tokenize(
            rendered.text, add_bos=rendered.add_bos, special=rendered.special
        )

    @property
    def n_vocab(self) -> int:
        return int(self._llama.n_vocab())

    def detokenize(self, tokens: list[int]) -> str:
        """The text of these token ids, special tokens' text included; ValueError for an id
        not in the vocabulary."""
        if unknown := [t for t in tokens if not 0 <= t < self.n_vocab]:
            raise ValueError(f"token id {unknown[0]} is not in the vocabulary of {self.n_vocab}")
        return self._llama.detokenize(tokens, special=True).decode("utf-8", errors="replace")

    def min_tokens(self, rendered: RenderedPrompt) -> int:
        """A lower bound on `len(self.tokenize(rendered))`, from the text's length alone.

        No token stands for more bytes than the vocabulary's longest, so a text of n bytes is
        at least n / longest tokens: a prompt far too long for any context is known as such
        without tokenizing it (seconds and hundreds of MB for a few MB of text).
        """
        span = self._span
        if not span.longest:
            return 0
        size = len(rendered.text)
        if span.strips:
            # Whitespace next to such a token (special, or user-defined and matched even in a
            # raw prompt) is in no token's piece; every other byte is.
            size -= sum(rendered.text.count(space) for space in _ASCII_SPACE)
        return math.ceil(size / span.longest)

    @cached_property
    def _span(self) -> _TokenSpan:
        model = self._llama._model
        if model.vocab_type() not in _SPELLING_VOCABS:
            return _TokenSpan(longest=0, strips=False)
        longest, strips, size = 0, False, 256
        piece = ctypes.create_string_buffer(size)
        for token in range(model.n_vocab()):
            # The bytes the token stands for, its special text included (llama.cpp never
            # writes more than `size`; a longer piece gives minus its length).
            length = llama_cpp.llama_token_to_piece(model.vocab, token, piece, size, 0, True)
            longest = max(longest, abs(length))
            strips = strips or bool(model.token_get_attr(token) & _STRIPS)
        return _TokenSpan(longest=max(longest, _LONGEST_CHARACTER), strips=strips)

    def _render_chat(
        self, messages: list[ChatMessage], continue_final: bool, tools: list[Tool]
    ) -> RenderedPrompt:
        if continue_final and not messages[-1].content.strip() and not messages[-1].tool_calls:
            # An empty prefill is the assistant's turn as the generation prompt opens it.
            messages, continue_final = messages[:-1], False
        if not self._native_tools:
            messages, tools = generic_messages(messages, tools), []
        if continue_final:
            text, added_special = self._continued(messages, tools)
        else:
            rendered = _format(self._template, messages, tools)
            text, added_special = rendered.prompt, rendered.added_special
        return RenderedPrompt(text.encode("utf-8"), add_bos=not added_special, special=True)

    def _continued(self, messages: list[ChatMessage], tools: list[Tool]) -> tuple[str, bool]:
        """The conversation rendered up to the end of the final message's text, left open.

        Every turn is rendered closed with a marker in place of the final message's text; the
        prompt is what comes before the marker, then that text.
        """
        final = messages[-1]
        marked = [*messages[:-1], final.model_copy(update={"content": _MARKER})]
        rendered = _format(self._closed, marked, tools)
        at = rendered.prompt.rfind(_MARKER)
        if at < 0:
            raise ValueError("the chat template drops the final message's text")
        return rendered.prompt[:at] + final.content, rendered.added_special


def _format(
    template: Jinja2ChatFormatter, messages: list[ChatMessage], tools: list[Tool]
) -> ChatFormatterResponse:
    # The template takes plain JSON-shaped dicts; llama-cpp-python types them as TypedDicts.
    chat: Any = template_messages(messages)
    offered: Any = template_tools(tools)
    return template(messages=chat, tools=offered)


def _render_raw(prompt: str) -> RenderedPrompt:
    return RenderedPrompt(prompt.encode("utf-8"), add_bos=True, special=False)
