"""What the `tokenq model` commands, `tokenq up` and the worker do with the registry and this
host's files: add a file, register the default model on first use, find a worker's file."""

from pathlib import Path

from pydantic import BaseModel

from shared.model_facts import read_facts, sha256
from shared.model_registry import files
from shared.model_registry.entry import GenerationDefaults, ModelEntry
from shared.model_registry.files import ModelFileError, Placement
from shared.model_registry.store import ModelRegistry, NameTakenError, RegistryError
from shared.settings import DEFAULT_MODEL, DEFAULT_MODEL_ALIAS, default_gguf_path

# The default model answers at most this many tokens when a request does not say: SmolLM2
# rambles on to the end of its context otherwise.
DEFAULT_MODEL_DEFAULTS = GenerationDefaults(max_tokens=512)


class Added(BaseModel):
    entry: ModelEntry
    path: Path  # the file in this host's model directory
    new: bool  # False: the name was registered with this digest already (file placed only)


def add_file(
    registry: ModelRegistry,
    models_dir: Path,
    source: Path,
    name: str,
    *,
    aliases: list[str] | None = None,
    defaults: GenerationDefaults | None = None,
    how: Placement = Placement.LINK,
    parent: str | None = None,
    origin: str | None = None,
) -> Added:
    """Register `source` as `name` and place it in this host's model directory.

    Adding a name again with the same file only places the file (how a second host gets it);
    with another file it is refused. `origin`: what to record as its source, if not the file.
    """
    if not source.is_file():
        raise RegistryError(f"no file at {source}")
    digest = sha256(source)
    existing = registry.get(name)
    if existing is not None:
        if existing.digest != digest:
            raise NameTakenError(
                f"'{name}' is registered with another file (sha256 {existing.digest}); "
                f"`tokenq model rm {existing.name}` first to register this one"
            )
        return Added(entry=existing, path=files.place(models_dir, source, digest, how), new=False)
    try:
        facts = read_facts(source, digest)
    except (ValueError, OSError) as exc:  # gguf's reader: not a GGUF file, or a broken one
        raise RegistryError(f"{source} is not a readable GGUF file: {exc}") from exc
    entry = ModelEntry(
        name=name,
        aliases=aliases or [],
        facts=facts,
        defaults=defaults or GenerationDefaults(),
        source=origin or str(source.resolve()),
        parent=parent,
    )
    path = files.place(models_dir, source, digest, how)
    registry.add(entry)
    return Added(entry=entry, path=path, new=True)


def ensure_default(registry: ModelRegistry, models_dir: Path) -> ModelEntry:
    """The default model's entry, registered (its wheel's file linked) on first use."""
    entry = registry.get(DEFAULT_MODEL)
    if entry is not None:
        if not files.locate(models_dir, entry.digest).exists():
            files.place(models_dir, default_gguf_path(), entry.digest, Placement.LINK)
        return entry
    try:
        return add_file(
            registry,
            models_dir,
            default_gguf_path(),
            DEFAULT_MODEL,
            aliases=[DEFAULT_MODEL_ALIAS],
            defaults=DEFAULT_MODEL_DEFAULTS,
        ).entry
    except NameTakenError:  # another process registered it meanwhile
        entry = registry.get(DEFAULT_MODEL)
        if entry is None:
            raise
        return entry


class ServedFile(BaseModel):
    """The file a worker serves, under which name, with its verified digest."""

    model: str
    path: Path
    digest: str | None  # None: a file given by path, not registered (hashed later)


def worker_file(
    registry: ModelRegistry, models_dir: Path, model: str, gguf: Path | None
) -> ServedFile:
    """Resolve a worker's model: a file given by path is served as is, under the name given;
    otherwise the registry's entry (the default model registered on first use), its file
    found in the model directory and checked against the registered digest."""
    if gguf is not None:
        return ServedFile(model=model, path=gguf, digest=None)
    entry = registry.get(model)
    if entry is None and model in (DEFAULT_MODEL, DEFAULT_MODEL_ALIAS):
        entry = ensure_default(registry, models_dir)
    if entry is None:
        raise ModelFileError(
            f"the model '{model}' is not registered: `tokenq model add FILE --name {model}` "
            "(or give the worker a file with --gguf)"
        )
    path = files.verified_path(models_dir, entry)
    return ServedFile(model=entry.name, path=path, digest=entry.digest)
