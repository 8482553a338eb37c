"""`manage.py rollup_indicators [--rebuild] [--since DATE]`: fold events into the indicator rollups.

Without options it does what the hourly beat job does: it folds the events queued since the last
run (the rollup backlog). `--rebuild` recomputes every rollup from the events; `--since DATE` recomputes the days
from DATE on (after a fix to old events' data, say) and keeps the earlier ones.
"""

from __future__ import annotations

from datetime import date

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from indicators import rollups


class Command(BaseCommand):
    help = "Fold new events into the indicator rollups, or recompute them (--rebuild, --since)."

    def add_arguments(self, parser):
        parser.add_argument("--rebuild", action="store_true", help="Recompute every rollup from the events.")
        parser.add_argument("--since", help="Recompute the days from this one (YYYY-MM-DD) on.")
        parser.add_argument(
            "--chunk-size", type=int, default=rollups.DEFAULT_CHUNK_EVENTS, help="About this many events per step."
        )
        parser.add_argument("--no-progress", action="store_true", help="No progress bar (for logs and cron).")

    def handle(self, *args, **options):
        since = None
        if options["since"]:
            try:
                since = date.fromisoformat(options["since"])
            except ValueError:
                raise CommandError(f"--since must be a date such as 2026-05-01, not {options['since']!r}.") from None
        if options["chunk_size"] < 1:
            raise CommandError("--chunk-size must be at least 1.")
        if options["rebuild"] and since:
            raise CommandError("Give --rebuild or --since, not both.")
        rebuilding = options["rebuild"] or since is not None
        total = rollups.days_to_rebuild(since=since) if rebuilding else rollups.pending_events()
        unit = "day" if rebuilding else "event"
        with tqdm(total=total, unit=unit, desc="rollups", disable=options["no_progress"]) as bar:
            if rebuilding:
                result = rollups.rebuild(
                    since=since,
                    chunk_events=options["chunk_size"],
                    progress=bar.update,
                )
            else:
                result = rollups.fold_new_events(chunk_events=options["chunk_size"], progress=bar.update)
        self.stdout.write(
            f"Folded {result.events} event(s) in {result.chunks} step(s); {result.days} day(s) recomputed; "
            f"highest event folded: {result.last_event_id}."
        )
