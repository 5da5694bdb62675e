"""RemoteFunction.encode_args: the positional fast path encodes exactly like the codec."""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal

import pytest

from wormhole import errors, remote
from wormhole.runtime import codec


@remote
def two(a, b):
    return a, b


VALUES = [None, True, False, 0, -7, 2**200, 1 << 12_001, -(1 << 12_001), 1.5, -0.0, math.inf,
          -math.inf, math.nan, "", "ünïcode ✓ \x00 \"q\"", b"\x01", Decimal("1.10"),
          dt.date(2020, 2, 29), [1, (2, 3)], {"k": {1, 2}}, {"$t": 1}]


def expected(*values: object) -> str:
    return json.dumps([[codec.encode_value(v) for v in values], {}], ensure_ascii=False,
                      allow_nan=False, separators=(",", ":"))


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_fast_path_matches_the_codec(value):
    assert two.encode_args(value, 1) == expected(value, 1)
    assert two.encode_args(value, b=1) == expected(value, 1)  # the bind() path agrees
    decoded = codec.decode_value(json.loads(two.encode_args(value, 1))[0][0])
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(decoded)  # type: ignore[arg-type]
    else:
        assert decoded == value and type(decoded) is type(value)


def test_unsupported_argument_is_named():
    with pytest.raises(errors.ArgumentError, match=r"two\(\): argument 'b'.*object"):
        two.encode_args(1, object())
