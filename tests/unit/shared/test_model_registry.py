"""The model registry over fakeredis: names and aliases, defaults, files by digest, the
worker's resolution, the manifest."""

import os
from pathlib import Path

import fakeredis
import pytest
from pydantic import ValidationError

from shared.job import SamplingParams
from shared.model_registry import files, ops, store
from shared.model_registry.entry import GenerationDefaults, Manifest, ModelEntry
from shared.model_registry.files import ModelFileError, Placement
from shared.model_registry.store import ModelRegistry, NameTakenError, RegistryError
from shared.settings import DEFAULT_MODEL, DEFAULT_MODEL_ALIAS
from tests.unit.api.harness import FACTS
from tests.unit.shared.test_model_facts import write_gguf


def entry(name: str, *aliases: str, digest: str = FACTS.digest) -> ModelEntry:
    facts = FACTS.model_copy(update={"digest": digest})
    return ModelEntry(name=name, aliases=list(aliases), facts=facts)


@pytest.fixture
def registry() -> ModelRegistry:
    return ModelRegistry(fakeredis.FakeRedis())


def test_a_model_is_found_by_its_name_and_every_alias(registry: ModelRegistry) -> None:
    registry.add(entry("a", "a:latest", "alpha"))
    for name in ("a", "a:latest", "alpha"):
        found = registry.get(name)
        assert found is not None and found.name == "a"
    assert registry.get("b") is None


def test_a_name_or_alias_of_another_model_is_refused(registry: ModelRegistry) -> None:
    registry.add(entry("a", "alpha"))
    with pytest.raises(NameTakenError, match="'alpha' already names the model 'a'"):
        registry.add(entry("b", "alpha"))
    with pytest.raises(NameTakenError, match="'alpha' already names"):
        registry.add(entry("alpha"))
    with pytest.raises(NameTakenError, match="already registered"):
        registry.add(entry("a"))
    assert [e.name for e in registry.entries()] == ["a"]
    assert registry.get("b") is None


def test_replacing_an_entry_drops_its_old_aliases(registry: ModelRegistry) -> None:
    registry.add(entry("a", "old"))
    registry.add(entry("a", "new"), replace=True)
    assert registry.get("old") is None
    assert registry.get("new") is not None


def test_removing_a_model_frees_all_its_names(registry: ModelRegistry) -> None:
    registry.add(entry("a", "alpha"))
    registry.add(entry("b"))
    assert registry.remove("alpha").name == "a"
    assert registry.get("a") is None and registry.get("alpha") is None
    registry.add(entry("alpha"))  # the name is free again
    assert [e.name for e in registry.entries()] == ["alpha", "b"]
    with pytest.raises(RegistryError, match="not registered"):
        registry.remove("a")


async def test_the_api_reads_what_the_cli_wrote() -> None:
    server = fakeredis.FakeServer()
    ModelRegistry(fakeredis.FakeRedis(server=server)).add(entry("a", "alpha"))
    redis = fakeredis.FakeAsyncRedis(server=server)
    found = await store.lookup(redis, "alpha")
    assert found is not None and found.name == "a"
    assert await store.lookup(redis, "nope") is None
    assert [e.name for e in await store.all_entries(redis)] == ["a"]


@pytest.mark.parametrize("name", ["", "a b", "a/b", "a:b:c", ":a", "x" * 129])
def test_a_name_must_be_usable_everywhere(name: str) -> None:
    with pytest.raises(ValidationError):
        entry(name)
    with pytest.raises(ValidationError):
        entry("ok", name)


def test_defaults_are_held_to_the_jobs_limits() -> None:
    with pytest.raises(ValidationError, match="temperature"):
        GenerationDefaults(temperature=3.0)
    with pytest.raises(ValidationError, match="max_tokens"):
        GenerationDefaults(max_tokens=0)
    with pytest.raises(ValidationError):
        GenerationDefaults(stop=[""])


def test_defaults_fill_only_what_the_client_did_not_send() -> None:
    defaults = GenerationDefaults(max_tokens=7, temperature=0.2, stop=["\n\n"])
    sampling = SamplingParams(max_tokens=3, temperature=0.9, top_k=5)
    applied = defaults.apply(sampling, sent={"max_tokens"})
    assert applied.max_tokens == 3  # sent: kept
    assert applied.temperature == 0.2  # left out: the model's default
    assert applied.stop == ["\n\n"]
    assert applied.top_k == 5  # no default: as the request built it
    assert GenerationDefaults().apply(sampling, set()) is sampling


def test_files_are_placed_by_digest_linked_or_copied(tmp_path: Path) -> None:
    source = write_gguf(tmp_path / "m.gguf")
    digest = files.sha256(source)
    linked = files.place(tmp_path / "linked", source, digest, Placement.LINK)
    copied = files.place(tmp_path / "copied", source, digest, Placement.COPY)
    assert linked.name == copied.name == f"sha256-{digest}.gguf"
    assert linked.is_symlink() and linked.resolve() == source.resolve()
    assert not copied.is_symlink() and copied.read_bytes() == source.read_bytes()
    assert not [p for p in (tmp_path / "copied").iterdir() if p.name.endswith(".partial")]


def test_check_tells_a_changed_file_and_a_missing_one(tmp_path: Path) -> None:
    models = tmp_path / "models"
    registry = ModelRegistry(fakeredis.FakeRedis())
    added = ops.add_file(registry, models, write_gguf(tmp_path / "m.gguf"), "m", how=Placement.COPY)
    assert files.check(models, added.entry).problem("m") is None
    with added.path.open("r+b") as file:  # one byte changed in place
        file.seek(-1, os.SEEK_END)
        file.write(b"\x01")
    problem = files.check(models, added.entry).problem("m")
    assert problem is not None and "was changed" in problem and added.entry.digest in problem
    with pytest.raises(ModelFileError, match="was changed"):
        ops.worker_file(registry, models, "m", None)
    added.path.unlink()
    problem = files.check(models, added.entry).problem("m")
    assert problem is not None and "not on this host" in problem


def test_adding_a_file_records_its_facts_and_is_idempotent(tmp_path: Path) -> None:
    models = tmp_path / "models"
    registry = ModelRegistry(fakeredis.FakeRedis())
    source = write_gguf(tmp_path / "m.gguf")
    defaults = GenerationDefaults(max_tokens=9)
    first = ops.add_file(registry, models, source, "m", aliases=["mm"], defaults=defaults)
    assert first.new
    assert first.entry.facts.file_type == "Q4_K_M"
    assert first.entry.context_length == 2048
    assert first.entry.digest == files.sha256(source)
    assert first.entry.defaults == defaults
    # Again on "another host" (another model directory): the file is placed, nothing changes.
    again = ops.add_file(registry, tmp_path / "other", source, "mm")
    assert not again.new and again.entry == first.entry and again.path.exists()
    other = tmp_path / "other.gguf"
    other.write_bytes(source.read_bytes() + b"\0")
    with pytest.raises(NameTakenError, match="another file"):
        ops.add_file(registry, models, other, "m")
    with pytest.raises(RegistryError, match="not a readable GGUF"):
        ops.add_file(registry, models, _text_file(tmp_path), "junk")
    assert registry.get("junk") is None


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "junk.gguf"
    path.write_text("not a model")
    return path


def test_a_worker_resolves_an_alias_to_its_model_and_verified_file(tmp_path: Path) -> None:
    models = tmp_path / "models"
    registry = ModelRegistry(fakeredis.FakeRedis())
    added = ops.add_file(registry, models, write_gguf(tmp_path / "m.gguf"), "m", aliases=["mm"])
    served = ops.worker_file(registry, models, "mm", None)
    assert served.model == "m" and served.path == added.path
    assert served.digest == added.entry.digest
    with pytest.raises(ModelFileError, match="'nope' is not registered"):
        ops.worker_file(registry, models, "nope", None)
    given = ops.worker_file(registry, models, "nope", tmp_path / "m.gguf")  # by path: as is
    assert given.model == "nope" and given.digest is None


def test_the_default_model_is_registered_on_first_use(tmp_path: Path) -> None:
    registry = ModelRegistry(fakeredis.FakeRedis())
    served = ops.worker_file(registry, tmp_path, DEFAULT_MODEL_ALIAS, None)
    entry = registry.get(DEFAULT_MODEL)
    assert entry is not None and entry.aliases == [DEFAULT_MODEL_ALIAS]
    assert entry.defaults.max_tokens is not None  # a small model does not ramble on
    assert served.model == DEFAULT_MODEL and served.path.is_symlink()
    assert ops.ensure_default(registry, tmp_path) == entry  # once


def test_the_manifest_round_trips(registry: ModelRegistry) -> None:
    registry.add(entry("a", "alpha"))
    registry.add(entry("b", digest="0" * 64))
    written = Manifest(models=registry.entries()).model_dump_json()
    elsewhere = ModelRegistry(fakeredis.FakeRedis())
    for imported in Manifest.model_validate_json(written).models:
        elsewhere.add(imported)
    assert elsewhere.entries() == registry.entries()
    with pytest.raises(ValidationError, match="version"):
        Manifest.model_validate_json('{"version": 99, "models": []}')
