"""JSON in and out on the ingestion path, through msgspec (reading) and orjson (writing), several
times faster than the standard library, which cost more per event than storing it; the standard
library is the judge of whatever they refuse or would write differently, so that every answer
stays what it was."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import orjson

_DECODER = msgspec.json.Decoder()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(raw: bytes | str) -> Any:
    """A request body as Python objects; ValueError or RecursionError for one that is not JSON.

    NaN and Infinity are refused. msgspec reads integers of any size exactly (orjson turns those
    beyond 64 bits into floats, so it is not used here) and refuses what the standard library
    reads (escaped lone surrogates, numbers too large for a float, nesting beyond its limit,
    UTF-16 bodies): those bodies go through the standard library, so they get the answers they
    always had."""
    try:
        return _DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return json.loads(raw, parse_constant=_refuse_constant)


_PASS_ON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def dumps(value: Any) -> str:
    """Compact JSON text of `value`; ValueError, TypeError or RecursionError as `json.dumps`
    (without ASCII escaping, NaN refused) raises them.

    orjson writes NaN and Infinity as null: output holding `null` is written again by the
    standard library, which refuses them. What orjson refuses (lone surrogates, non-string keys,
    integers beyond 64 bits, and the dates, dataclasses and subclasses it is told to pass on) goes
    through the standard library too, which writes or refuses it as before."""
    try:
        dumped = orjson.dumps(value, option=_PASS_ON).decode()
    except (orjson.JSONEncodeError, TypeError):
        dumped = None
    if dumped is None or "null" in dumped:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return dumped
