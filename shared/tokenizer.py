"""A model's own prompt format: the GGUF's chat template, then its tokenizer.

The worker and the API count prompt tokens with this same code, so a count the API gives
before enqueueing equals the usage the worker reports. On the API side it loads the GGUF's
vocabulary only (llama.cpp `vocab_only`), a few MB and a fraction of a second.
"""

from pathlib import Path

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from shared.job import ChatMessage


class PromptTokenizer:
    def __init__(self, llama: llama_cpp.Llama) -> None:
        self._llama = llama
        template = llama.metadata.get("tokenizer.chat_template")
        if template is None:
            raise ValueError("the GGUF has no chat template (tokenizer.chat_template)")
        model = llama._model
        eos, bos = model.token_eos(), model.token_bos()
        self._template = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
        )

    @classmethod
    def load(cls, gguf: Path) -> "PromptTokenizer":
        """Vocabulary and metadata only, no weights."""
        return cls(llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False))

    def chat(self, messages: list[ChatMessage]) -> list[int]:
        rendered = self._template(messages=[m.model_dump() for m in messages])  # type: ignore[misc]
        return self._llama.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
        )

    def raw(self, prompt: str) -> list[int]:
        return self._llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)

    def tokens(self, messages: list[ChatMessage] | None, prompt: str | None) -> list[int]:
        return self.chat(messages) if messages is not None else self.raw(prompt or "")
