"""JSON schemas and tools to GBNF (api/grammar.py), compiled by llama.cpp with its vocabulary."""

import ctypes
import json

import llama_cpp
import pytest
from pydantic import BaseModel, Field

from api.grammar import (
    JSON_OBJECT_GRAMMAR,
    UnsupportedSchemaError,
    _cached,
    schema_grammar,
    tool_call_grammar,
)
from shared.job import NamedToolChoice, Tool
from shared.settings import default_gguf_path


class Place(BaseModel):
    city: str = Field(max_length=20)
    days: int


class Trip(BaseModel):
    where: Place
    mode: str = Field(json_schema_extra={"enum": ["car", "train"]})


@pytest.fixture(scope="module")
def vocab() -> ctypes.c_void_p:
    llama = llama_cpp.Llama(model_path=str(default_gguf_path()), vocab_only=True, verbose=False)
    return llama._model.vocab  # type: ignore[no-any-return]


def compiles(vocab: ctypes.c_void_p, grammar: str) -> bool:
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


def test_a_pydantic_schema_becomes_a_grammar_llama_cpp_takes(vocab: ctypes.c_void_p) -> None:
    grammar = schema_grammar(Trip.model_json_schema(), "response_format")
    assert compiles(vocab, grammar)
    assert '"\\"train\\""' in grammar
    # JSON strings exclude raw control characters (the converter's own rule would allow them)
    assert r"\x00-\x1F" in grammar
    assert compiles(vocab, JSON_OBJECT_GRAMMAR)


def test_the_same_schema_is_converted_once() -> None:
    _cached.cache_clear()
    schema = Trip.model_json_schema()
    assert schema_grammar(schema, "p") == schema_grammar(json.loads(json.dumps(schema)), "p")
    assert _cached.cache_info().hits == 1


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "integer", "minimum": 3}, "'minimum'"),
        ({"type": "object", "properties": {"a": {"not": {}}}}, "'not' at 'properties.a'"),
        ({"type": "string", "format": "email"}, '"email"'),
        ({"type": "thing"}, '"thing"'),
        ({"type": "object", "required": ["a"]}, "'a'"),
        ({"type": "object", "properties": {"a": True}}, "at 'properties.a'"),
        ({"$ref": "https://example.com/s.json"}, "only '#/...'"),
    ],
)
def test_what_the_grammar_cannot_enforce_is_refused_by_name(schema: object, named: str) -> None:
    with pytest.raises(UnsupportedSchemaError) as refused:
        schema_grammar(schema, "response_format.json_schema.schema")
    assert named in refused.value.message
    assert refused.value.param == "response_format.json_schema.schema"
    assert refused.value.status == 400


def test_tool_call_grammars_compile(vocab: ctypes.c_void_p) -> None:
    tools = [
        Tool(name="plan", parameters=Trip.model_json_schema()),
        Tool(name="noop"),
        # a definition of the same name in another tool is its own rule
        Tool(
            name="other",
            parameters={
                "type": "object",
                "properties": {"p": {"$ref": "#/$defs/Place"}},
                "$defs": {"Place": {"type": "object", "properties": {"x": {"type": "boolean"}}}},
            },
        ),
    ]
    every = tool_call_grammar(tools, "required", True, "tools")
    assert every.startswith('root ::= "<tool_call>" tq-tool-calls "</tool_call>"')
    assert "t0-Place ::=" in every and "t2-Place ::=" in every
    assert compiles(vocab, every)
    one = tool_call_grammar(tools, NamedToolChoice(name="noop"), False, "tools")
    assert '"\\"noop\\""' in one and "plan" not in one
    assert 'tq-tool-calls ::= "[" space item "]" space' in one
    assert compiles(vocab, one)


def test_a_tool_schema_the_grammar_cannot_enforce_is_named() -> None:
    tools = [Tool(name="f", parameters={"type": "object", "properties": {"n": {"multipleOf": 2}}})]
    with pytest.raises(UnsupportedSchemaError) as refused:
        tool_call_grammar(tools, "required", True, "tools")
    assert "tools (f)" in refused.value.message and "'multipleOf'" in refused.value.message
