"""A model's tokenizer as a vocab-only GGUF, published in Redis for API hosts without the file.

The API counts prompt tokens itself (api/tokenizers.py), loading the vocabulary of the GGUF a
worker serves. Where the API and the workers run on different hosts, that file is not on the
API's: so the first worker of a file publishes, under the file's sha256, a GGUF of the file's
key/value metadata without its tensors. That keeps the vocabulary, merges, token types, chat
template and the architecture's hyperparameters llama.cpp reads on any load, and llama.cpp
loads it with `vocab_only`, exactly as it loads its own ggml-vocab-*.gguf files. For SmolLM2
it is 1.8 MB of a 98 MB file.
"""

import logging
import tempfile
from pathlib import Path

import gguf
from redis import Redis

from shared import keys

log = logging.getLogger(__name__)

# Large vocabularies (256k tokens with scores, or 280k merges) make GGUFs of 5-10 MB; beyond
# this something is wrong with the file, and a Redis value that size would hurt every reader.
MAX_BYTES = 32 * 1024 * 1024


def build(reader: gguf.GGUFReader) -> bytes:
    """The vocab-only GGUF of the file `reader` reads: every key/value, no tensor."""
    architecture = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    writer = gguf.GGUFWriter(None, arch=architecture, endianess=reader.endianess)
    for field in reader.fields.values():
        # The container's own header fields are rewritten by the writer; so is the architecture.
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        kind = field.types[0]
        item_kind = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=item_kind)
    # GGUFWriter writes only to files.
    with tempfile.TemporaryDirectory(prefix="tokenq-vocab-") as tmp:
        path = Path(tmp) / "vocab.gguf"
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.close()
        return path.read_bytes()


def is_published(redis: Redis, digest: str) -> bool:
    """Whether the tokenizer of the file with this sha256 is in Redis."""
    return bool(redis.exists(keys.model_vocab(digest)))


def publish(redis: Redis, digest: str, reader: gguf.GGUFReader) -> None:
    """Put the file's vocab-only GGUF in Redis under its sha256, unless it is there already.

    A file whose vocab-only GGUF cannot be built, or is over MAX_BYTES, is not published
    (logged): the worker serves it all the same, and API hosts count its prompts only where
    they have the file itself.
    """
    try:
        data = build(reader)
    except (KeyError, ValueError, OSError):
        log.exception("could not build the tokenizer of the file %s", digest)
        return
    if len(data) > MAX_BYTES:
        log.warning(
            "not publishing the tokenizer of the file %s: its vocab-only GGUF is %d bytes, "
            "over %d; API hosts without this file cannot count its prompts",
            digest,
            len(data),
            MAX_BYTES,
        )
        return
    # Workers of the same file starting together write the same bytes; the first one stays.
    redis.set(keys.model_vocab(digest), data, nx=True)
    log.info("published the tokenizer of the file %s (%d bytes)", digest, len(data))
