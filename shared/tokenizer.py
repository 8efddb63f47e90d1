"""A model's own prompt format: the GGUF's chat template, then its tokenizer.

The worker and the API count prompt tokens with this same code, so a count the API gives
before enqueueing equals the usage the worker reports. On the API side it loads the GGUF's
vocabulary only (llama.cpp `vocab_only`), a few MB and a fraction of a second.
"""

from pathlib import Path

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from shared.job import ChatMessage

_MARKER = "\u2063tokenq-final-message\u2063"  # INVISIBLE SEPARATOR: not in real text


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
        if continue_final and not messages[-1].content.strip():
            # An empty prefill is the assistant's turn as the generation prompt opens it.
            messages, continue_final = messages[:-1], False
        if continue_final:
            text, added_special = self._continued(messages)
        else:
            rendered = self._template(messages=[m.model_dump() for m in messages])  # type: ignore[misc]
            text, added_special = rendered.prompt, rendered.added_special
        return self._llama.tokenize(text.encode("utf-8"), add_bos=not added_special, special=True)

    def raw(self, prompt: str) -> list[int]:
        return self._llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)

    def tokens(
        self, messages: list[ChatMessage] | None, prompt: str | None, continue_final: bool = False
    ) -> list[int]:
        if messages is not None:
            return self.chat(messages, continue_final)
        return self.raw(prompt or "")

    def _continued(self, messages: list[ChatMessage]) -> tuple[str, bool]:
        """The conversation rendered up to the end of the final message's text, left open.

        Every turn is rendered closed with a marker in place of the final message's text; the
        prompt is what comes before the marker, then that text.
        """
        final = messages[-1]
        marked = [*messages[:-1], final.model_copy(update={"content": _MARKER})]
        rendered = self._closed(messages=[m.model_dump() for m in marked])  # type: ignore[misc]
        at = rendered.prompt.rfind(_MARKER)
        if at < 0:
            raise ValueError("the chat template drops the final message's text")
        return rendered.prompt[:at] + final.content, rendered.added_special
