"""Hypothesis strategies for request bodies to the five generation endpoints, good and bad.

Most bodies start from a valid request and break one or a few of its fields, so that they get
past the parser and reach the request models, the neutral job, the token count and the worker;
the rest are any JSON at all, or bytes that are not JSON. The values cover wrong types, sizes,
nesting and encodings: unpaired surrogates, NUL, huge and non-finite numbers, deep nesting,
wrong containers and very long strings (still within the body cap).
"""

import json
from typing import Any

from hypothesis import strategies as st

from tests.unit.api.harness import MODEL

GENERATION_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/messages",
    "/api/generate",
    "/api/chat",
)

_USER = [{"role": "user", "content": "hi"}]

# A valid body per endpoint, and the fields (paths into it) a body may break.
_VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": MODEL, "messages": _USER},
    "/v1/completions": {"model": MODEL, "prompt": "hi"},
    "/v1/messages": {"model": MODEL, "max_tokens": 8, "messages": _USER},
    "/api/generate": {"model": MODEL, "prompt": "hi"},
    "/api/chat": {"model": MODEL, "messages": _USER},
}
_SPECIAL_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",  # unpaired surrogates, alone and inside text
    "Hi \udfff there",
    "\udbff",
    "\ufeff",
    "\u2028",
    "\U0001f4a5",
    "\u2063tokenq-final-message\u2063",  # the tokenizer's own marker
    "<|im_end|>",
    "{{ messages }}{% for x in range(9) %}",
    MODEL,
    f"{MODEL}:latest",
    "nope",
    "user",
    "assistant",
    "system",
    "text",
    "image",
    "disabled",
]

# An unpaired surrogate inside text: no string type refuses it, only the job's check.
_with_surrogate = st.builds(
    lambda head, surrogate, tail: head + surrogate + tail,
    st.text(max_size=5),
    st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"]),
    st.text(max_size=5),
)
_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(_SPECIAL_TEXT),
    _with_surrogate,
    st.text(st.characters(categories=["Cs", "Cc", "Co", "Zs"]), min_size=1, max_size=8),
)
# Long strings within the body cap: up to ~600 KB as JSON (a surrogate is 6 bytes escaped).
_long_text = st.builds(
    lambda piece, n: piece * n,
    st.sampled_from(["x", "\u00e9", "\U0001f4a5", "\ud800", "a\x00"]),
    st.integers(1_000, 100_000),
)
_hostile_text = st.one_of(
    _with_surrogate, st.sampled_from(["", " ", "\x00", "a\x00b", _SPECIAL_TEXT[10]]), _long_text
)
_number = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64, 10**100, -(10**300)]),
    st.floats(allow_nan=True, allow_infinity=True),  # NaN and Infinity: JSON extensions
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 4.0, 1e308, 5e-324, 1e-7]),
)
_scalar = st.one_of(st.none(), st.booleans(), _number, _text)
_json = st.recursive(
    _scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_text, children, max_size=4)
    ),
    max_leaves=12,
)


def _nested(depth: int, leaf: Any, as_dict: bool) -> Any:
    for _ in range(depth):
        leaf = {"a": leaf} if as_dict else [leaf]
    return leaf


_deep = st.builds(_nested, st.integers(10, 400), _scalar, st.booleans())
_value = st.one_of(
    _json,
    _long_text,
    _deep,
    st.lists(_text, min_size=17, max_size=40),  # more stop strings than allowed
    st.lists(_json, min_size=50, max_size=200),
)
_int = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64, 10**100, -(10**300)]),
)
_float = st.one_of(_number, st.sampled_from([0, 1, 2, -2, 3]))
_texts = st.one_of(st.lists(_text, max_size=5), st.lists(_text, min_size=17, max_size=40))
_blocks = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _text}), max_size=3)

# The kinds of value a field takes, each with values of that type that are bad in content.
_KINDS: dict[str, st.SearchStrategy[Any]] = {
    "text": st.one_of(_text, _text, _long_text),
    "texts": st.one_of(_texts, _text),
    "blocks": st.one_of(_blocks, _text),  # a string is shorthand for one text block
    "int": _int,
    "float": _float,
    "bool": st.booleans(),
    "message": st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": _text}
    ),
    "any": _value,
}
_SAMPLING = {"temperature": "float", "top_p": "float", "top_k": "int", "seed": "int"}
_OPTIONS = {
    **_SAMPLING,
    "stop": "texts",
    "num_predict": "int",
    "num_ctx": "int",
    "min_p": "float",
    "repeat_penalty": "float",
    "presence_penalty": "float",
    "mirostat": "int",
    "typical_p": "float",
}
Path = tuple[str | int, ...]
_OPENAI: dict[Path, str] = {
    ("model",): "text",
    ("stop",): "texts",
    ("max_tokens",): "int",
    ("min_p",): "float",
    ("repetition_penalty",): "float",
    ("frequency_penalty",): "float",
    ("n",): "int",
    ("user",): "text",
    ("stream_options",): "any",
    ("stream_options", "include_usage"): "bool",
    **{(name,): kind for name, kind in _SAMPLING.items()},
}
# The fields of each endpoint a body may break, and their kinds.
_FIELDS: dict[str, dict[Path, str]] = {
    "/v1/chat/completions": {
        **_OPENAI,
        ("messages",): "any",
        ("messages", 0): "any",
        ("messages", 0, "role"): "text",
        ("messages", 0, "content"): "blocks",
        ("messages", 1): "message",
        ("messages", 0, "name"): "text",
        ("max_completion_tokens",): "int",
        ("logprobs",): "bool",
    },
    "/v1/completions": {
        **_OPENAI,
        ("prompt",): "texts",
        ("prompt", 0): "text",
        ("echo",): "bool",
        ("suffix",): "text",
        ("best_of",): "int",
        ("logprobs",): "int",
    },
    "/v1/messages": {
        ("model",): "text",
        ("max_tokens",): "int",
        ("stop_sequences",): "texts",
        ("system",): "blocks",
        ("messages",): "any",
        ("messages", 0): "any",
        ("messages", 0, "role"): "text",
        ("messages", 0, "content"): "blocks",
        ("messages", 1): "message",
        ("messages", 0, "content", 0, "type"): "text",
        ("metadata", "user_id"): "text",
        ("thinking", "type"): "text",
        **{(name,): kind for name, kind in _SAMPLING.items()},
    },
    "/api/generate": {
        ("model",): "text",
        ("prompt",): "text",
        ("system",): "text",
        ("raw",): "bool",
        ("options",): "any",
        ("keep_alive",): "any",
        ("format",): "text",
        ("images",): "texts",
        **{("options", name): kind for name, kind in _OPTIONS.items()},
    },
    "/api/chat": {
        ("model",): "text",
        ("messages",): "any",
        ("messages", 0, "role"): "text",
        ("messages", 0, "content"): "text",
        ("messages", 1): "message",
        ("tools",): "any",
        ("think",): "any",
        ("options",): "any",
        **{("options", name): kind for name, kind in _OPTIONS.items()},
    },
}


def _set(body: Any, path: tuple[str | int, ...], value: Any) -> None:
    """Put `value` at `path`, building what is missing; a path into a non-container is
    skipped (the body stays as it was there)."""
    for i, key in enumerate(path[:-1]):
        nxt: Any = [] if isinstance(path[i + 1], int) else {}
        if isinstance(body, dict) and isinstance(key, str):
            body = body.setdefault(key, nxt)
        elif isinstance(body, list) and isinstance(key, int):
            while len(body) <= key:
                body.append(nxt)
            body = body[key]
        else:
            return
    last = path[-1]
    if isinstance(body, dict) and isinstance(last, str):
        body[last] = value
    elif isinstance(body, list) and isinstance(last, int):
        while len(body) <= last:
            body.append(value)
        body[last] = value


@st.composite
def _broken(draw: st.DrawFn, path: str) -> Any:
    """A valid body for `path` with one to three fields set to a value of their own type that
    is bad in its content, or to a value of any type, or removed."""
    body = json.loads(json.dumps(_VALID[path]))
    body["stream"] = draw(st.booleans())
    fields = _FIELDS[path]
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(sorted(fields, key=str)))
        how = draw(st.sampled_from(["own type", "own type", "any type", "removed"]))
        if how == "removed" and len(field) == 1:
            body.pop(field[0], None)
        else:
            kind = fields[field] if how == "own type" else "any"
            _set(body, field, draw(_KINDS[kind]))
    return body


# The texts a job holds, in each endpoint's body.
_JOB_TEXTS: dict[str, list[Path]] = {
    "/v1/chat/completions": [("messages", 0, "content"), ("stop",), ("model",)],
    "/v1/completions": [("prompt",), ("prompt", 0), ("stop",), ("model",)],
    "/v1/messages": [("messages", 0, "content"), ("system",), ("stop_sequences",), ("model",)],
    "/api/generate": [("prompt",), ("system",), ("options", "stop"), ("model",)],
    "/api/chat": [("messages", 0, "content"), ("options", "stop"), ("model",)],
}


@st.composite
def _hostile(draw: st.DrawFn, path: str) -> Any:
    """A valid body for `path` with one of the texts its job holds set to text that is empty,
    long, or not valid Unicode."""
    body = json.loads(json.dumps(_VALID[path]))
    body["stream"] = draw(st.booleans())
    field = draw(st.sampled_from(_JOB_TEXTS[path]))
    text = draw(_hostile_text)
    kind = _FIELDS[path][field]
    if kind == "texts":
        _set(body, field, [text])
    elif kind == "blocks" and draw(st.booleans()):
        _set(body, field, [{"type": "text", "text": text}])
    else:
        _set(body, field, text)
    return body


def _encode(body: Any, how: str) -> bytes:
    if how == "ascii":  # surrogates travel as \ud800 escapes: valid JSON
        return json.dumps(body).encode()
    if how == "utf-8":  # surrogates as raw bytes: not UTF-8 at all
        return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(body, ensure_ascii=False).encode("utf-16", "surrogatepass")


_not_json = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"{", b"null", b"[]", b'{"model": }', b"\xff\xfe{}", b"{} {}"]),
    st.integers(1, 5_000).map(lambda depth: b"[" * depth + b"]" * depth),
)


def bodies(path: str) -> st.SearchStrategy[bytes]:
    """Request bodies for one generation endpoint: a valid body with a hostile text (2 in 5),
    a valid body broken a little, any JSON value, bytes that are no JSON (1 in 5 each)."""
    encoding = st.sampled_from(["ascii", "ascii", "ascii", "utf-8", "utf-16"])
    hostile = st.builds(_encode, _hostile(path), st.just("ascii"))
    return st.one_of(
        hostile,
        hostile,
        st.builds(_encode, _broken(path), encoding),
        st.builds(_encode, _value, encoding),
        _not_json,
    )
