"""The ingestion path reads and writes JSON through orjson, with the standard library as the
judge of what orjson refuses or writes differently: every value must come out as the standard
library would have it, and every refusal must stay a refusal."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracking import jsonio

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # beyond 64 bits too
    | st.floats()  # NaN and infinities included
    | st.text()  # lone surrogates included
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def standard_dumps(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@given(values)
def test_dumps_writes_what_the_standard_library_writes_or_refuses_alike(value):
    try:
        expected = json.loads(standard_dumps(value))
    except ValueError as exc:
        with pytest.raises(type(exc)):
            jsonio.dumps(value)
        return
    assert json.loads(jsonio.dumps(value)) == expected


@given(values)
def test_loads_reads_what_the_standard_library_reads(value):
    try:
        text = standard_dumps(value)
    except ValueError:
        return
    assert jsonio.loads(text.encode("utf-8", "surrogatepass")) == json.loads(text)


@pytest.mark.parametrize("body", [b'{"a": NaN}', b'{"a": Infinity}', b"[-Infinity]", b"{", b"[1,]", b""])
def test_loads_refuses_what_is_not_json(body):
    with pytest.raises(ValueError):
        jsonio.loads(body)


def test_a_number_too_large_for_a_double_is_read_as_the_standard_library_reads_it():
    assert math.isinf(jsonio.loads(b"[1e400]")[0])
