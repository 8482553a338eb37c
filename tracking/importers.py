"""Reading historical events from JSON Lines or CSV files, one record at a time.

Both formats carry the API's event shape, so the import validates with the same code as
`POST /api/v1/events`. CSV has one column per top-level field (`event_id`, `name`, `kind`,
`timestamp`, `user_id`, `anonymous_id`) and takes `properties` and `context` either as JSON
columns or flattened into `properties.<key>` / `context.<key>` columns (both may be used; a
flattened column wins over the same key in the JSON column). CSV cells are text, so a typed
property (a number, a list) belongs in the `properties` JSON column. Empty cells count as absent.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tracking.validation import MAX_PROPERTIES_BYTES

FORMATS = ("jsonl", "csv")
# A CSV cell may hold a whole properties object; the csv module's default limit (128 KiB) is
# raised to what an event may legitimately carry plus room for the other JSON column.
csv.field_size_limit(max(csv.field_size_limit(), 4 * MAX_PROPERTIES_BYTES))


@dataclass(frozen=True)
class Record:
    """One record of the file: the event as read, or why it could not be read."""

    line: int
    event: Any = None
    error: dict[str, list[str]] | None = None


class CountingReader(io.RawIOBase):
    """Passes a binary file through and reports the bytes read, for a progress bar that needs no
    pass over the file beforehand."""

    def __init__(self, raw: IO[bytes], on_read: Callable[[int], Any]) -> None:
        self._raw = raw
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self._on_read(len(data))
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise ValueError(f"cannot tell the format of {path.name}; name it .jsonl or .csv, or pass --format")


def open_text(path: Path, on_read: Callable[[int], Any]) -> IO[str]:
    """The file as text, decompressed when it ends in .gz; `on_read` sees the bytes on disk."""
    raw: IO[bytes] = io.BufferedReader(CountingReader(open(path, "rb"), on_read))  # noqa: SIM115
    if path.suffix.lower() == ".gz":
        raw = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
    # utf-8-sig: spreadsheet exports often start with a byte order mark.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline="")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_jsonl(stream: IO[str]) -> Iterator[Record]:
    line_number = 0
    while True:
        try:
            line = stream.readline()
        except UnicodeDecodeError:
            line_number += 1
            yield Record(line_number, error={"non_field_errors": ["the line is not UTF-8"]})
            return  # the decoder cannot find the next line boundary reliably after bad bytes
        if not line:
            return
        line_number += 1
        if not line.strip():
            continue
        try:
            yield Record(line_number, event=json.loads(line, parse_constant=_refuse_constant))
        except (ValueError, RecursionError) as exc:
            yield Record(line_number, error={"non_field_errors": [f"not valid JSON: {exc}"]})


def _csv_event(row: dict[str | None, Any]) -> tuple[dict[str, Any] | None, dict[str, list[str]]]:
    event: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    flattened: dict[str, dict[str, str]] = {"properties": {}, "context": {}}
    if row.get(None):
        errors["non_field_errors"] = ["the row has more cells than the header"]
    for column, value in row.items():
        if column is None or value is None or value == "":
            continue
        prefix, dot, key = column.partition(".")
        if dot and prefix in flattened:
            flattened[prefix][key] = value
        elif column in ("properties", "context"):
            try:
                event[column] = json.loads(value, parse_constant=_refuse_constant)
            except (ValueError, RecursionError):
                errors[column] = ["is not valid JSON"]
        else:
            event[column] = value
    for name, values in flattened.items():
        if values:
            base = event.get(name)
            if base is None:
                event[name] = values
            elif isinstance(base, dict):
                event[name] = {**base, **values}
    return (None, errors) if errors else (event, {})


def read_csv(stream: IO[str]) -> Iterator[Record]:
    reader = csv.DictReader(stream)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as exc:
            yield Record(reader.line_num, error={"non_field_errors": [f"unreadable CSV: {exc}"]})
            return
        event, errors = _csv_event(row)
        # line_num is where the record ends: the line itself unless a quoted cell spans lines.
        yield Record(reader.line_num, event=event, error=errors or None)


READERS: dict[str, Callable[[IO[str]], Iterator[Record]]] = {"jsonl": read_jsonl, "csv": read_csv}
