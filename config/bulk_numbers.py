"""Columns of numbers between PostgreSQL and numpy, a million rows at a time.

A nightly run reads millions of rows of a few numbers and writes a million back. Row by row, as
Python tuples or as text, that costs seconds per direction, nearly all of it in handling single
values (libpq hands over a COPY's output one row per call). Here the rows travel as fixed-width
binary records that numpy reads and writes as one block:

- reading, the database packs each row with the types' send functions (`int8send` ...) and
  concatenates them with `string_agg` into a few large `bytea` values, fetched in binary;
- writing, numpy builds PostgreSQL's binary COPY format
  (https://www.postgresql.org/docs/current/sql-copy.html, "Binary Format") and sends it in one go.

Only fixed-width numbers travel this way (int8, int4, int2, float8), and no NULL: the statement
turns NULL into NaN (`COALESCE(x, 'NaN')`) or a sentinel, and NaN back into NULL
(`NULLIF(x, 'NaN')`) on the way in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import psycopg
from django.db import connections

# The type's send function, its wire format (big-endian) and what it becomes here.
TYPES = {
    "int8": ("int8send", ">i8", np.int64),
    "int4": ("int4send", ">i4", np.int32),
    "int2": ("int2send", ">i2", np.int16),
    "float8": ("float8send", ">f8", np.float64),
}
# Rows are packed in this many groups (by the first column), so that no single value nears
# PostgreSQL's limit of 1 GB per field.
GROUPS = 64

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


class NullInColumns(ValueError):
    """A row the statement returned has a NULL, which these columns cannot carry."""


def _check(types: list[str]) -> None:
    for pg_type in types:
        if pg_type not in TYPES:
            raise ValueError(f"{pg_type!r} is not a fixed-width type this reads or writes ({', '.join(TYPES)})")


def _check_integers(name: str, pg_type: str, values: np.ndarray) -> None:
    """Values bound for an integer column must be whole and fit it: numpy would wrap 40000 into
    an int2 and cut 1.7 to 1 without a word."""
    if values.dtype.kind not in "iuf" and len(values):
        raise ValueError(f"column {name!r} ({pg_type}) has values that are not numbers ({values.dtype})")
    if values.dtype.kind == "f" and not (np.isfinite(values) & (values == np.round(values))).all():
        raise ValueError(f"column {name!r} ({pg_type}) has values that are not whole numbers")
    limits = np.iinfo(TYPES[pg_type][2])
    if len(values) and (values.min() < limits.min or values.max() > limits.max):
        raise ValueError(f"column {name!r} has values outside {pg_type}'s range {limits.min}..{limits.max}")


def read_columns(
    sql: str, params: Mapping[str, Any] | None, columns: Mapping[str, str], *, using: str = "default"
) -> dict[str, np.ndarray]:
    """The rows of `sql` as numpy arrays, one per column: `columns` names the statement's
    columns in order with their types (int8, int4, int2 or float8; the first an integer). The
    rows come back in no particular order. Runs in the connection's current transaction."""
    groups = list(read_groups(sql, params, columns, using=using))
    if not groups:
        return {name: np.zeros(0, dtype=TYPES[pg_type][2]) for name, pg_type in columns.items()}
    return {name: np.concatenate([group[name] for group in groups]) for name in columns}


def read_groups(
    sql: str, params: Mapping[str, Any] | None, columns: Mapping[str, str], *, using: str = "default"
) -> Iterator[dict[str, np.ndarray]]:
    """As `read_columns`, one group of rows at a time: the rows whose first column has one value
    modulo GROUPS (all the rows of one customer, when that column is the customer). A caller
    that works group by group holds a 64th of the rows' working copies at a time. The statement
    runs, and every group is checked, before this returns: only the conversion is left to the
    iteration, which may then happen outside the caller's transaction."""
    names, types = list(columns), list(columns.values())
    _check(types)
    if types[0] == "float8":
        raise ValueError("the first column groups the rows: it must be an integer")
    aliases = [f"c{i}" for i in range(len(names))]
    packed = " || ".join(f"{TYPES[t][0]}({alias})" for t, alias in zip(types, aliases, strict=True))
    record = np.dtype([(name, TYPES[t][1]) for name, t in zip(names, types, strict=True)])
    statement = (
        f"SELECT count(*), string_agg({packed}, ''::bytea) "
        f"FROM ({sql}) AS rows ({', '.join(aliases)}) GROUP BY mod(c0, {GROUPS})"
    )
    connection = connections[using]
    # What Django's own cursors do first: drop a connection that failed its health check, refuse
    # to run in a transaction already broken, and raise Django's errors rather than psycopg's.
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_no_broken_transaction()
    # A cursor of its own: Django's binds parameters on the client and reads results as text.
    # Closed before the first group is handed out: the result's copy in libpq goes with it.
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(statement, params, binary=True)
        blocks = cursor.fetchall()
    # string_agg skips a row whose record is NULL (any column NULL): a group holds fewer records
    # than rows.
    missing = sum(count - len(block or b"") // record.itemsize for count, block in blocks)
    if missing:
        total = sum(count for count, _ in blocks)
        raise NullInColumns(f"{missing} of {total} rows have a NULL in one of {names}")
    return _converted(blocks, record, {name: TYPES[t][2] for name, t in zip(names, types, strict=True)})


def _converted(blocks: list, record: np.dtype, native: dict[str, type]) -> Iterator[dict[str, np.ndarray]]:
    for i, (_count, block) in enumerate(blocks):
        blocks[i] = None  # each block's bytes go once its columns are made
        rows = np.frombuffer(block or b"", dtype=record)
        yield {name: rows[name].astype(np_type) for name, np_type in native.items()}


def write_columns(table: str, columns: Mapping[str, tuple[str, Any]], *, using: str = "default") -> int:
    """COPY rows into `table`: `columns` maps each column's name to (its type, its values), all
    of one length. NaN goes as NaN, never NULL. Returns the number of rows."""
    names = list(columns)
    types = [pg_type for pg_type, _ in columns.values()]
    _check(types)
    arrays = [np.asarray(values) for _, values in columns.values()]
    lengths = {len(values) for values in arrays}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths: {dict(zip(names, map(len, arrays), strict=True))}")
    fields: list[tuple[str, str]] = [("count", ">i2")]
    for i, pg_type in enumerate(types):
        fields += [(f"length{i}", ">i4"), (f"value{i}", TYPES[pg_type][1])]
    rows = np.empty(lengths.pop() if lengths else 0, dtype=np.dtype(fields))
    rows["count"] = len(names)
    for i, (name, pg_type, values) in enumerate(zip(names, types, arrays, strict=True)):
        if pg_type != "float8":
            _check_integers(name, pg_type, values)
        rows[f"length{i}"] = np.dtype(TYPES[pg_type][1]).itemsize
        rows[f"value{i}"] = values
    header = COPY_SIGNATURE + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
    statement = f"COPY {table} ({', '.join(names)}) FROM STDIN (FORMAT binary)"
    with connections[using].cursor() as cursor, cursor.cursor.copy(statement) as copy:
        copy.write(header + rows.tobytes() + b"\xff\xff")
    return len(rows)
