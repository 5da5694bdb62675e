"""``runtime/jsonlite``: the runtime's JSON from ``_json`` alone gives ``json``'s text and verdicts
(it exists so that a new worker need not import ``json``, ``re`` and ``enum``)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wormhole.runtime import jsonlite

scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False,
                                                                              allow_infinity=False)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=25)


@settings(deadline=None, max_examples=300)
@given(values)
def test_dumps_is_json_dumps(value):
    assert jsonlite.dumps(value) == json.dumps(value)
    compact = {"ensure_ascii": False, "separators": (",", ":")}
    assert jsonlite.dumps(value, **compact) == json.dumps(value, **compact)
    enc = jsonlite.Encoder(allow_nan=False, separators=(",", ":"))
    assert enc.encode(value) == json.JSONEncoder(allow_nan=False, check_circular=False,
                                                 separators=(",", ":")).encode(value)


@settings(deadline=None, max_examples=300)
@given(values, st.sampled_from(["", " ", "\n\t ", "\r\n"]))
def test_loads_is_json_loads(value, space):
    text = space + json.dumps(value) + space
    assert jsonlite.loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", " ", "[1,", "1 2", '{"a"}', "nul", "[1]x", "'a'", "\"\\x\""])
def test_invalid_text_is_a_value_error_as_in_json(text):
    with pytest.raises(ValueError) as ours:
        jsonlite.loads(text)
    with pytest.raises(ValueError) as theirs:
        json.loads(text)
    assert type(ours.value) is type(theirs.value)


def test_hooks_and_constants_reach_the_c_scanner():
    seen = []
    dec = jsonlite.Decoder(object_hook=lambda d: seen.append(d) or d,
                           parse_constant=lambda name: f"<{name}>")
    assert dec.decode('[{"a": NaN}, Infinity]') == [{"a": "<NaN>"}, "<Infinity>"]
    assert seen == [{"a": "<NaN>"}]
    assert math.isnan(jsonlite.loads("NaN"))


def test_encoding_refuses_what_json_refuses():
    with pytest.raises(ValueError):
        jsonlite.Encoder(allow_nan=False).encode(float("nan"))
    with pytest.raises(TypeError):
        jsonlite.dumps({1j})
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError):
        jsonlite.dumps(loop)
    assert jsonlite.dumps([1]) == "[1]"  # an encoder that raised leaves no stale state behind


def test_importing_it_imports_neither_json_nor_re():
    import subprocess
    import sys

    code = ("import sys\n"
            f"ns = {{'__name__': 'jsonlite'}}\n"
            f"exec(compile(open({jsonlite.__file__!r}).read(), 'jsonlite', 'exec'), ns)\n"
            "assert ns['loads']('[1, {\"a\": 2}]') == [1, {'a': 2}] and ns['dumps']({'a': [1]})\n"
            "print(sorted(m for m in ('json', 're', 'enum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
