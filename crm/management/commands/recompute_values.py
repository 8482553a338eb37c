"""`manage.py recompute_values [--scheme NAME|ID]`: the nightly value recompute, by hand.

It calls the service the beat job "crm: nightly recompute of customer value" calls (RFM scores,
segments, tiers, lifecycle stages, account managers), records the same `RecomputeRun`, shows a
progress bar over its steps and ends with each step's time and the counts. Exits 1 with the
reason when the run fails (the run is then failed, with the reason, in the admin).
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from config.failures import failure_reason
from crm import selectors, services
from crm.models import RecomputeRun, ScoringScheme


class Command(BaseCommand):
    help = "Recompute every profile's RFM scores, segment, tier and lifecycle stage now (as the nightly job does)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--scheme", help="Scoring scheme by name or id (default: the active one, as the nightly job)."
        )
        parser.add_argument("--no-progress", action="store_true", help="No progress bar (for logs and cron).")

    def handle(self, *args, **options):
        scheme = self._scheme(options["scheme"]) if options["scheme"] else None
        started = time.monotonic()
        with tqdm(
            total=len(services.RECOMPUTE_STEPS), unit="step", desc="value recompute", disable=options["no_progress"]
        ) as bar:

            def progress(step: str) -> None:
                bar.set_postfix_str(step)
                bar.update(1)

            try:
                run = services.recompute_customer_values(scheme=scheme, progress=progress)
            except Exception as exc:
                failed = RecomputeRun.objects.filter(status=RecomputeRun.Status.FAILED).order_by("-pk").first()
                which = f"Value recompute run {failed.pk}" if failed else "The value recompute"
                raise CommandError(f"{which} failed: {failure_reason(exc)}", returncode=1) from exc
        elapsed = time.monotonic() - started
        if run.status == RecomputeRun.Status.SKIPPED:
            raise CommandError(f"Value recompute run {run.pk} skipped: another recompute is running.", returncode=1)
        self._summary(run, elapsed)

    def _scheme(self, value: str) -> ScoringScheme:
        scheme = ScoringScheme.objects.filter(pk=int(value)).first() if value.isdigit() else None
        scheme = scheme or ScoringScheme.objects.filter(name=value).first()
        if scheme is None:
            names = ", ".join(ScoringScheme.objects.order_by("name").values_list("name", flat=True)) or "none"
            raise CommandError(f"No scoring scheme {value!r} (schemes: {names}).")
        return scheme

    def _summary(self, run: RecomputeRun, elapsed: float) -> None:
        out = self.stdout.write
        scheme = run.scheme.name if run.scheme else "-"
        out(f"Value recompute run {run.pk}: {run.status} in {elapsed:.1f} s (scheme {scheme}).")
        for step in services.RECOMPUTE_STEPS:
            out(f"  {step:<17} {run.timings.get(step, 0):8.3f} s")
        out(
            f"Profiles {run.profiles}, customers {run.customers}, changes {run.changes}, "
            f"account managers assigned {run.managers_assigned}, waiting for capacity {run.unassigned_for_capacity}."
        )
        tiers, stages = selectors.tier_and_stage_counts()
        out("Tiers: " + (", ".join(f"{slug or '(none)'} {n}" for slug, n in sorted(tiers.items())) or "no profiles"))
        out("Lifecycle: " + (", ".join(f"{s or '(none)'} {n}" for s, n in sorted(stages.items())) or "no profiles"))
