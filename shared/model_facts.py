"""What a model file is: size, digest and the GGUF metadata, read by the worker serving it.

The worker registers these facts with its heartbeat (shared/registry.py), so the API can
describe a served model (Ollama's /api/tags, /api/ps, /api/show) without opening the file.
Reading the metadata takes seconds for a large vocabulary, so it is done once per file
content: the facts are kept in Redis under the file's sha256, and later workers of the same
file only hash it. The same first read publishes the file's tokenizer (shared/vocab.py).
"""

import hashlib
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from pydantic import BaseModel, Field
from redis import Redis

from shared import keys, vocab

Scalar = str | int | float | bool
MetadataValue = Scalar | list[Scalar]

# Arrays longer than this (token tables, merges) are registered empty, as Ollama shows them
# unless asked to be verbose: they are megabytes, and the heartbeat rewrites these facts.
MAX_ARRAY = 16
_HASH_CHUNK = 1 << 20


class ModelFacts(BaseModel):
    format: str = "gguf"
    size: int = Field(description="File size in bytes.")
    digest: str = Field(description="sha256 of the file, hex.")
    modified_at: float = Field(description="File modification time, Unix seconds.")
    architecture: str = Field(description="general.architecture, e.g. 'llama'.")
    parameter_count: int
    file_type: str = Field(description="Quantization of most tensors, e.g. 'Q4_1'.")
    metadata: dict[str, MetadataValue] = Field(
        description=f"Every GGUF key/value; arrays over {MAX_ARRAY} items left empty."
    )

    @property
    def chat_template(self) -> str | None:
        template = self.metadata.get("tokenizer.chat_template")
        return template if isinstance(template, str) else None

    @property
    def license(self) -> str | None:
        value = self.metadata.get("general.license")
        return value if isinstance(value, str) else None


def describe(redis: Redis, path: Path, digest: str | None = None) -> ModelFacts:
    """The file's facts, its metadata read from Redis when this content was read before.

    `digest`: the file's sha256 when the caller has just computed it. Also makes sure the
    file's tokenizer is published (shared/vocab.py), reading the file for it only if no worker
    of this content did before.
    """
    digest = digest or sha256(path)
    cached = redis.get(keys.model_facts(digest))
    reader: gguf.GGUFReader | None = None
    if cached is None:
        reader = gguf.GGUFReader(path)
        facts = read_facts(path, digest, reader)
        redis.set(keys.model_facts(digest), facts.model_dump_json())
    else:
        # Size and metadata follow from the content; the modification time is this file's own.
        facts = ModelFacts.model_validate_json(cached).model_copy(
            update={"modified_at": path.stat().st_mtime}
        )
    # Checked on its own: facts registered by a version that did not publish tokenizers.
    if not vocab.is_published(redis, digest):
        vocab.publish(redis, digest, reader or gguf.GGUFReader(path))
    return facts


def read_facts(
    path: Path, digest: str | None = None, reader: gguf.GGUFReader | None = None
) -> ModelFacts:
    """Hash the file (unless its digest is given) and read its GGUF header, memory-mapped
    (unless a reader of it is given)."""
    stat = path.stat()
    reader = reader or gguf.GGUFReader(path)
    metadata = {
        name: _value(field)
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")  # the container's own header, not model metadata
    }
    if "general.parameter_count" not in metadata:
        metadata["general.parameter_count"] = sum(int(t.n_elements) for t in reader.tensors)
    parameters = metadata["general.parameter_count"]
    file_type = metadata.get("general.file_type")
    return ModelFacts(
        size=stat.st_size,
        digest=digest or sha256(path),
        modified_at=stat.st_mtime,
        architecture=str(metadata.get("general.architecture", "unknown")),
        parameter_count=int(parameters) if isinstance(parameters, int | float) else 0,
        file_type=_file_type_name(file_type if isinstance(file_type, int) else None),
        metadata=metadata,
    )


def parameter_size(count: int) -> str:
    """A parameter count the way Ollama prints it: 134.52M, 8.0B, 7B."""
    for unit, scale, decimals in (("B", 1e9, 1), ("M", 1e6, 2)):
        if count >= scale:
            number = count / scale
            return f"{number:.0f}{unit}" if number.is_integer() else f"{number:.{decimals}f}{unit}"
    return f"{count / 1e3:.0f}K" if count >= 1000 else str(count)


def _value(field: Any) -> MetadataValue:
    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        if len(field.data) > MAX_ARRAY:
            return []
        return [_scalar(v, field.types[-1]) for v in field.contents()]
    return _scalar(field.contents(), kind)


def _scalar(value: Any, kind: gguf.GGUFValueType) -> Scalar:
    if kind == gguf.GGUFValueType.FLOAT32:
        # The shortest decimal that is this float32 (1e-05, not 9.999999747378752e-06).
        return float(str(np.float32(value)))
    if kind == gguf.GGUFValueType.BOOL:
        return bool(value)
    return value  # type: ignore[no-any-return]


def _file_type_name(file_type: int | None) -> str:
    try:
        name = gguf.LlamaFileType(file_type).name if file_type is not None else "unknown"
    except ValueError:
        return f"file type {file_type}"
    return name.removeprefix("ALL_").removeprefix("MOSTLY_")


def sha256(path: Path) -> str:
    """The file's sha256, hex (about 0.3 s per 100 MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
