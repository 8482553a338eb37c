"""`manage.py score_contributions [--month YYYY-MM]`: the nightly contribution scores, by hand.

It calls the service the beat job "community: contribution scores nightly" calls and records the
same `ScoreRun` (default month: the previous one). Exits 1 with the reason when the run fails
(the run is then failed, with the reason, in the admin and the API).
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from rest_framework.exceptions import ValidationError

from community import services
from community.serializers import parse_month
from config.failures import failure_reason


class Command(BaseCommand):
    help = "Score every operator and team for a month now (as the nightly job does for the previous month)."

    def add_arguments(self, parser):
        parser.add_argument("--month", help="YYYY-MM (default: the previous month)")

    def handle(self, *args, **options):
        month = None
        if options["month"]:
            try:
                month = parse_month(options["month"])
            except ValidationError:
                raise CommandError(f"--month: {options['month']!r} is not a month as YYYY-MM, e.g. 2026-05.") from None
        try:
            run = services.compute_contribution_scores(month=month)
        except Exception as exc:
            raise CommandError(f"The score run failed: {failure_reason(exc)}") from exc
        self.stdout.write(
            f"Scores of {run.month:%Y-%m}: {run.operators} operator(s), {run.teams} team(s) (run {run.pk})."
        )
