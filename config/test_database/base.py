"""PostgreSQL for the test suite: Django's own backend with a cheaper flush between transactional tests.

Django empties the tables after each transactional test with one TRUNCATE of every table. TRUNCATE
gives each table, index and TOAST table new files and scans the whole buffer pool once per file, so
with some hundred relations it costs seconds even when every table is empty, and the suite runs it
after a few hundred tests. Between tests nearly every table is already empty or holds a few rows:
DELETE empties those at the cost of the rows. A table that a test filled with many rows, or that
has grown on disk, is still truncated (with CASCADE, as the point is to empty everything). Foreign
keys are DEFERRABLE INITIALLY DEFERRED in Django's schema, so the order of the DELETEs does not
matter within the one transaction.
"""

from __future__ import annotations

from django.db.backends.postgresql import base, operations

# Above this many rows, TRUNCATE's fixed cost is cheaper than deleting row by row. Above this size
# on disk a table holds dead rows (of rolled-back tests, or of earlier deletes) that the following
# tests would scan until autovacuum came: TRUNCATE gives the space back at once.
TRUNCATE_FROM_ROWS = 20_000
TRUNCATE_FROM_BYTES = 1024 * 1024
FLUSH_TRIES = 10


class DatabaseOperations(operations.DatabaseOperations):
    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        if not tables or reset_sequences:
            # Restarting identities is what TRUNCATE ... RESTART IDENTITY does in one statement.
            return super().sql_flush(style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        names = ", ".join("'" + self.quote_name(t).replace("'", "''") + "'" for t in tables)
        return [
            # Every TRUNCATE before the first DELETE: a DELETE leaves deferred foreign-key checks
            # pending, and PostgreSQL refuses to TRUNCATE a table with pending trigger events.
            # A worker of the suite may still be finishing a task of the test that just ended:
            # when the flush and that task deadlock, the flush's attempt is rolled back to its
            # savepoint (releasing its locks, so the task can finish) and tried again.
            "DO $flush$ DECLARE t regclass; n bigint; small regclass[]; tries int := 0; BEGIN "
            "LOOP BEGIN small := '{}'; "
            f"FOREACH t IN ARRAY ARRAY[{names}]::regclass[] LOOP "
            f"EXECUTE format('SELECT count(*) FROM (SELECT FROM ONLY %s LIMIT {TRUNCATE_FROM_ROWS}) s', t) INTO n; "
            f"IF n >= {TRUNCATE_FROM_ROWS} OR pg_total_relation_size(t) > {TRUNCATE_FROM_BYTES} "
            "THEN EXECUTE format('TRUNCATE %s CASCADE', t); "
            "ELSE small := small || t; END IF; "
            "END LOOP; "
            "FOREACH t IN ARRAY small LOOP EXECUTE format('DELETE FROM %s', t); END LOOP; "
            "EXIT; "
            "EXCEPTION WHEN deadlock_detected THEN tries := tries + 1; "
            f"IF tries >= {FLUSH_TRIES} THEN RAISE; END IF; PERFORM pg_sleep(0.2 * tries); "
            "END; END LOOP; END $flush$"
        ]


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations
