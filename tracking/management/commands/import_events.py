"""`manage.py import_events FILE`: load historical events from JSON Lines or CSV (optionally .gz).

The file is streamed in chunks, each stored in its own transaction with the API's validation and
duplicate handling, so millions of rows never sit in memory and an interrupted import can simply
be run again: what was stored counts as duplicates the second time.
"""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from tqdm import tqdm

from tracking.importers import FORMATS, READERS, Record, detect_format, open_text
from tracking.services import ingest_events
from tracking.validation import max_future_skew, validate_event


class Command(BaseCommand):
    help = "Import historical events from a JSON Lines or CSV file (see tracking/importers.py for the columns)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--format", choices=FORMATS, help="Default: from the file name (.jsonl/.ndjson, .csv).")
        parser.add_argument("--chunk-size", type=int, default=1000, help="Events per transaction (default 1000).")
        parser.add_argument("--show-rejected", type=int, default=20, help="Rejected lines to print (default 20).")
        parser.add_argument("--rejected-file", type=Path, help="Write every rejected line and its reasons (JSONL).")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar (for logs and cron).")
        parser.add_argument("--dry-run", action="store_true", help="Validate every line and report, but store nothing.")

    def handle(self, *args, file: Path, **options) -> None:
        if not file.is_file():
            raise CommandError(f"no such file: {file}")
        try:
            fmt = options["format"] or detect_format(file)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        chunk_size = options["chunk_size"]
        if not 1 <= chunk_size <= 10_000:
            raise CommandError("--chunk-size must be between 1 and 10000")
        self.shown_limit = options["show_rejected"]
        self.shown: list[tuple[int, dict]] = []
        self.rejected = self.accepted = self.duplicates = 0
        self.dry_run = options["dry_run"]
        rejected_path = options["rejected_file"]
        rejected_out = open(rejected_path, "w", encoding="utf-8") if rejected_path else None  # noqa: SIM115
        self.rejected_out = rejected_out

        progress = tqdm(
            total=file.stat().st_size, unit="B", unit_scale=True, desc=file.name, disable=options["no_progress"]
        )
        try:
            with open_text(file, progress.update) as stream:
                chunk: list[Record] = []
                for record in READERS[fmt](stream):
                    if record.error:
                        self._reject(record.line, record.error)
                        continue
                    chunk.append(record)
                    if len(chunk) >= chunk_size:
                        self._store(chunk)
                        chunk = []
                        progress.set_postfix_str(
                            f"accepted={self.accepted} duplicates={self.duplicates} rejected={self.rejected}"
                        )
                if chunk:
                    self._store(chunk)
        except (OSError, EOFError) as exc:  # a truncated or corrupt .gz, a vanished file
            self._summary()
            raise CommandError(f"stopped reading {file}: {exc}; the chunks counted above are stored") from exc
        finally:
            progress.close()
            if rejected_out:
                rejected_out.close()
        self._summary()

    def _store(self, chunk: list[Record]) -> None:
        if self.dry_run:
            self._validate(chunk)
            return
        result = ingest_events(events=[record.event for record in chunk], now=timezone.now())
        self.accepted += result.accepted
        self.duplicates += result.duplicates
        for rejection in result.rejected:
            self._reject(chunk[rejection.index].line, rejection.errors)

    def _validate(self, chunk: list[Record]) -> None:
        now = timezone.now()
        latest = now + max_future_skew()
        for record in chunk:
            clean, errors = validate_event(record.event, now=now, latest=latest)
            if clean is None:
                self._reject(record.line, errors)
            else:
                self.accepted += 1

    def _reject(self, line: int, errors: dict) -> None:
        self.rejected += 1
        if len(self.shown) < self.shown_limit:
            self.shown.append((line, errors))
        if self.rejected_out:
            self.rejected_out.write(json.dumps({"line": line, "errors": errors}, ensure_ascii=False) + "\n")

    def _summary(self) -> None:
        if self.dry_run:
            self.stdout.write(f"valid: {self.accepted} (dry run: nothing stored)")
        else:
            self.stdout.write(f"accepted: {self.accepted}")
            self.stdout.write(f"duplicates: {self.duplicates}")
        self.stdout.write(f"rejected: {self.rejected}")
        for line, errors in self.shown:
            reasons = "; ".join(
                (" / ".join(msgs) if field == "non_field_errors" else f"{field} {' / '.join(msgs)}")
                for field, msgs in errors.items()
            )
            self.stdout.write(f"  line {line}: {reasons}")
        if self.rejected > len(self.shown):
            self.stdout.write(f"  ... and {self.rejected - len(self.shown)} more (see --rejected-file)")
