"""Columns of numbers to and from PostgreSQL as binary blocks: what goes in comes out exactly, in
the caller's transaction, and a NULL or a wrong type is an error rather than a shifted column."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import DatabaseError, connection, transaction
from django.db.transaction import TransactionManagementError

from config import bulk_numbers

pytestmark = pytest.mark.django_db

COLUMNS = {"id": "int8", "small": "int2", "medium": "int4", "value": "float8"}


@pytest.fixture
def scratch():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE bulk_scratch (id bigint, small smallint, medium integer, value float8)")
    yield "bulk_scratch"
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bulk_scratch")


def test_what_is_written_reads_back_exactly_extremes_and_nan_included(scratch):
    rng = np.random.default_rng(7)
    n = 50_000
    ids = np.arange(n, dtype=np.int64) * 7919 - 10**12
    ids[:2] = [np.iinfo(np.int64).max, np.iinfo(np.int64).min + 1]
    small = rng.integers(-32768, 32767, n, dtype=np.int16)
    medium = rng.integers(-(2**31), 2**31 - 1, n, dtype=np.int32)
    value = rng.normal(0, 1e6, n)
    value[[3, 5]] = [np.nan, -0.0]
    written = bulk_numbers.write_columns(
        scratch, {"id": ("int8", ids), "small": ("int2", small), "medium": ("int4", medium), "value": ("float8", value)}
    )
    assert written == n
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), count(*) FILTER (WHERE value = 'NaN'), sum(medium) FROM bulk_scratch")
        assert cursor.fetchone() == (n, 1, int(medium.astype(np.int64).sum()))

    read = bulk_numbers.read_columns("SELECT id, small, medium, value FROM bulk_scratch", None, COLUMNS)
    order = np.argsort(read["id"])  # rows come back in no particular order
    expected = np.argsort(ids)
    assert np.array_equal(read["id"][order], ids[expected])
    assert np.array_equal(read["small"][order], small[expected])
    assert np.array_equal(read["medium"][order], medium[expected])
    assert np.array_equal(read["value"][order], value[expected], equal_nan=True)
    assert read["small"].dtype == np.int16 and read["value"].dtype == np.float64


def test_parameters_bind_and_an_empty_result_gives_empty_columns(scratch):
    bulk_numbers.write_columns(scratch, {"id": ("int8", [1, 2, 3]), "value": ("float8", [0.5, 1.5, 2.5])})
    read = bulk_numbers.read_columns(
        "SELECT id, value FROM bulk_scratch WHERE value > %(above)s", {"above": 1.0}, {"id": "int8", "value": "float8"}
    )
    assert sorted(read["id"].tolist()) == [2, 3]
    none = bulk_numbers.read_columns(
        "SELECT id, value FROM bulk_scratch WHERE id > %(above)s", {"above": 99}, {"id": "int8", "value": "float8"}
    )
    assert len(none["id"]) == 0 and none["value"].dtype == np.float64


def test_a_null_is_refused_not_dropped_or_shifted(scratch):
    # 2 and 66 share a group (modulo 64) with a row that has no NULL; 67 is alone in its own.
    bulk_numbers.write_columns(scratch, {"id": ("int8", [1, 2, 66, 67]), "value": ("float8", [1.0, 2.0, 3.0, 4.0])})
    with connection.cursor() as cursor:
        cursor.execute("UPDATE bulk_scratch SET value = NULL WHERE id IN (66, 67)")
    with pytest.raises(bulk_numbers.NullInColumns, match=r"2 of 4 rows have a NULL in one of \['id', 'value'\]"):
        bulk_numbers.read_columns("SELECT id, value FROM bulk_scratch", None, {"id": "int8", "value": "float8"})


def test_reads_and_writes_happen_in_the_callers_transaction(scratch):
    with transaction.atomic():
        bulk_numbers.write_columns(scratch, {"id": ("int8", [10])})
        inside = bulk_numbers.read_columns("SELECT id FROM bulk_scratch", None, {"id": "int8"})
        assert inside["id"].tolist() == [10]
        transaction.set_rollback(True)
    assert bulk_numbers.read_columns("SELECT id FROM bulk_scratch", None, {"id": "int8"})["id"].tolist() == []


def test_types_it_cannot_carry_and_mismatched_columns_are_errors(scratch):
    with pytest.raises(ValueError, match="'numeric' is not a fixed-width type"):
        bulk_numbers.read_columns("SELECT 1::numeric", None, {"x": "numeric"})
    with pytest.raises(ValueError, match="first column groups the rows"):
        bulk_numbers.read_columns("SELECT 1.5::float8", None, {"x": "float8"})
    with pytest.raises(ValueError, match="different lengths"):
        bulk_numbers.write_columns(scratch, {"id": ("int8", [1, 2]), "value": ("float8", [1.0])})
    with pytest.raises(ValueError, match="'small' \\(int2\\) has values that are not whole numbers"):
        bulk_numbers.write_columns(scratch, {"id": ("int8", [1]), "small": ("int2", np.array([np.nan]))})
    with pytest.raises(ValueError, match="'id' \\(int8\\) has values that are not whole numbers"):
        bulk_numbers.write_columns(scratch, {"id": ("int8", np.array([1.7]))})
    with pytest.raises(ValueError, match=r"'small' has values outside int2's range -32768\.\.32767"):
        bulk_numbers.write_columns(scratch, {"id": ("int8", [1]), "small": ("int2", [40_000])})
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM bulk_scratch")
        assert cursor.fetchone() == (0,)  # nothing half-written
    # A column declared narrower than it is: the database refuses, as a Django error.
    bulk_numbers.write_columns(scratch, {"id": ("int8", [1])})
    with pytest.raises(DatabaseError, match="int2send"), transaction.atomic():
        bulk_numbers.read_columns("SELECT id FROM bulk_scratch", None, {"id": "int2"})


def test_a_broken_transaction_is_refused_as_with_djangos_own_cursors(scratch):
    with transaction.atomic():
        try:
            with transaction.atomic(savepoint=False), connection.cursor() as cursor:
                cursor.execute("SELECT 1 / 0")
        except DatabaseError:
            pass
        with pytest.raises(TransactionManagementError):
            bulk_numbers.read_columns("SELECT id FROM bulk_scratch", None, {"id": "int8"})


@pytest.mark.django_db(transaction=True)
def test_it_opens_a_closed_connection_and_reads_in_autocommit():
    connection.close()
    read = bulk_numbers.read_columns(
        "SELECT g::int8, g * 0.5 FROM generate_series(1, %(n)s) g", {"n": 1000}, {"id": "int8", "half": "float8"}
    )
    assert sorted(read["id"].tolist()) == list(range(1, 1001))
    assert read["half"].sum() == pytest.approx(0.5 * 1000 * 1001 / 2)


def test_groups_hold_every_row_of_a_first_column_value_negative_ones_included(scratch):
    ids = np.array([-130, -66, -2, 0, 62, 126, 2**62, -(2**62), 5, 5, 69], dtype=np.int64)
    bulk_numbers.write_columns(scratch, {"id": ("int8", ids), "value": ("float8", np.arange(len(ids), dtype=float))})
    groups = list(
        bulk_numbers.read_groups("SELECT id, value FROM bulk_scratch", None, {"id": "int8", "value": "float8"})
    )
    seen = [sorted(group["id"].tolist()) for group in groups]
    # Each id in exactly one group, both rows of 5 together; the groups add up to every row.
    assert sorted(i for group in seen for i in group) == sorted(ids.tolist())
    assert next(group for group in seen if 5 in group).count(5) == 2
    for group in groups:
        assert len({int(i) % 64 if i >= 0 else -(-int(i) % 64) for i in group["id"]}) == 1
