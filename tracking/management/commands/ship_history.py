"""`manage.py ship_history`: give ClickHouse the events stored before shipping was switched on.

Ingestion queues an event for ClickHouse only while `OPSLOOP_EVENTS_STORE=clickhouse`: what was
stored before (and what a web process still on the old setting stored during a rolling restart,
or an off period) is in neither ClickHouse nor the outbox. This queues, in id ranges, every stored
event ClickHouse does not hold and the outbox does not hold already, then ships the outbox. Until
it has completed once, ClickHouse answers no page (a 503 that says how many events wait) and
retention deletes nothing. Run it after every process has the new setting; run it again with
`--from-start` after an off period or to fill holes below the mark. Safe to interrupt and rerun.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from tracking import shipping


class Command(BaseCommand):
    help = "Queue every stored event ClickHouse does not hold yet into the shipping outbox, and ship it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--chunk", type=int, default=100_000, help="Stored events per step (default 100000).")
        parser.add_argument(
            "--from-start", action="store_true", help="Look at every stored event again, not only those after the mark."
        )
        parser.add_argument("--no-ship", action="store_true", help="Queue only; the beat task ships the outbox.")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar (for logs and cron).")

    def handle(self, *args, chunk: int, from_start: bool, no_ship: bool, no_progress: bool, **options) -> None:
        if not 1_000 <= chunk <= 10_000_000:
            raise CommandError("--chunk must be between 1000 and 10000000")
        bar = tqdm(unit="ids", unit_scale=True, desc="history", disable=no_progress)
        done = 0

        def progress(through: int, top: int, queued: int) -> None:
            nonlocal done
            bar.total = top
            bar.update(through - done)
            done = through
            bar.set_postfix_str(f"queued={queued}")

        try:
            result = shipping.ship_history(chunk=chunk, from_start=from_start, progress=progress)
        except shipping.HistoryRefused as error:
            raise CommandError(str(error)) from error
        finally:
            bar.close()
        if result.busy:
            raise CommandError("another ship_history is running")
        self.stdout.write(f"queued: {result.queued} events (ids through {result.through})")
        if not no_ship:
            try:
                shipped = shipping.ship_events()
            except shipping.ShippingFailed as error:
                raise CommandError(f"shipping failed, the outbox keeps the events for the next run: {error}") from error
            self.stdout.write(f"shipped: {shipped.events} events in {shipped.batches} batches")
        loaded = shipping.state().history_loaded_at
        self.stdout.write(
            f"history loaded: {loaded.isoformat() if loaded else 'not yet (the outbox still holds some)'}"
        )
