"""The vocab-only GGUF a worker publishes: built from the real SmolLM2 file, loaded by llama.cpp."""

from pathlib import Path

import fakeredis
import gguf
import pytest

from shared import keys, vocab
from shared.job import ChatMessage
from shared.model_facts import describe
from shared.settings import default_gguf_path
from shared.tokenizer import PromptTokenizer
from tests.unit.shared.test_model_facts import write_gguf

CHAT = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Héllo 🙂 世界, what is <|im_end|> 2+2?\n\n   ok"),
]
TEXTS = ["", "raw text", "naïve café ☕ 𝄞", "<|im_start|>user\nhi<|im_end|>", " \t\n" * 50]


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "smollm2.vocab.gguf"
    path.write_bytes(vocab.build(gguf.GGUFReader(default_gguf_path())))
    return path


@pytest.fixture(scope="module")
def full() -> PromptTokenizer:
    return PromptTokenizer.load(default_gguf_path())


def test_it_keeps_every_key_and_no_tensor(vocab_file: Path) -> None:
    source, built = gguf.GGUFReader(default_gguf_path()), gguf.GGUFReader(vocab_file)
    assert len(built.tensors) == 0
    names = [n for n in source.fields if not n.startswith("GGUF.")]
    assert sorted(n for n in built.fields if not n.startswith("GGUF.")) == sorted(names)
    for name in names:
        assert built.fields[name].contents() == source.fields[name].contents(), name
    size = vocab_file.stat().st_size
    assert size < vocab.MAX_BYTES and size < default_gguf_path().stat().st_size / 20


def test_llama_cpp_tokenizes_with_it_as_with_the_full_file(
    vocab_file: Path, full: PromptTokenizer
) -> None:
    alone = PromptTokenizer.load(vocab_file)
    assert alone._llama.metadata == full._llama.metadata
    assert alone.chat(CHAT) == full.chat(CHAT)  # the chat template, and special tokens
    prefill = [*CHAT, ChatMessage(role="assistant", content="It is")]
    assert alone.chat(prefill, continue_final=True) == full.chat(prefill, continue_final=True)
    for text in [*TEXTS, Path("README.md").read_text()]:
        assert alone.raw(text) == full.raw(text), text


def test_describe_publishes_the_tokenizer_once_per_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = fakeredis.FakeRedis()
    first = describe(redis, write_gguf(tmp_path / "a.gguf"))
    published = redis.get(keys.model_vocab(first.digest))
    assert published == vocab.build(gguf.GGUFReader(tmp_path / "a.gguf"))

    def unbuilt(*_args: object) -> bytes:
        raise AssertionError("built again")

    monkeypatch.setattr("shared.vocab.build", unbuilt)
    copy = tmp_path / "b.gguf"
    copy.write_bytes((tmp_path / "a.gguf").read_bytes())
    describe(redis, copy)
    assert redis.get(keys.model_vocab(first.digest)) == published


def test_facts_without_a_tokenizer_get_one(tmp_path: Path) -> None:
    """Facts registered by a version that did not publish tokenizers."""
    redis = fakeredis.FakeRedis()
    facts = describe(redis, write_gguf(tmp_path / "a.gguf"))
    redis.delete(keys.model_vocab(facts.digest))
    describe(redis, tmp_path / "a.gguf")
    assert vocab.is_published(redis, facts.digest)


def test_an_oversized_tokenizer_is_not_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(vocab, "MAX_BYTES", 100)
    redis = fakeredis.FakeRedis()
    facts = describe(redis, write_gguf(tmp_path / "a.gguf"))
    assert not vocab.is_published(redis, facts.digest)
    assert "not publishing the tokenizer" in caplog.text
