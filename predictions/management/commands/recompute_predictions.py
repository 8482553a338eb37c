"""`manage.py recompute_predictions`: the nightly prediction run, by hand.

It calls the service the beat job "predictions: nightly lifetime value and churn risk" calls,
records the same `PredictionRun`, shows a progress bar over its steps and ends with each step's
time, the fitted parameters, the churn model's quality and the counts. Exits 1 with the reason
when the run fails (the run is then failed, with the reason, in the admin).
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from config.failures import failure_reason
from predictions import selectors, services
from predictions.models import PredictionRun, RunStatus


class Command(BaseCommand):
    help = "Fit the lifetime-value and churn models and score every customer now (as the nightly job does)."

    def add_arguments(self, parser):
        parser.add_argument("--no-progress", action="store_true", help="No progress bar (for logs and cron).")

    def handle(self, *args, **options):
        started = time.monotonic()
        with tqdm(
            total=len(services.RUN_STEPS), unit="step", desc="predictions", disable=options["no_progress"]
        ) as bar:

            def progress(step: str) -> None:
                bar.set_postfix_str(step)
                bar.update(1)

            try:
                run = services.recompute_predictions(progress=progress)
            except Exception as exc:
                failed = PredictionRun.objects.filter(status=RunStatus.FAILED).order_by("-pk").first()
                which = f"Prediction run {failed.pk}" if failed else "The prediction run"
                raise CommandError(f"{which} failed: {failure_reason(exc)}", returncode=1) from exc
        if run.status == RunStatus.SKIPPED:
            raise CommandError(f"Prediction run {run.pk} skipped: another run is in progress.", returncode=1)
        self._summary(run, time.monotonic() - started)

    def _summary(self, run: PredictionRun, elapsed: float) -> None:
        out = self.stdout.write
        out(f"Prediction run {run.pk}: {run.status} in {elapsed:.1f} s (reference {run.reference_at:%Y-%m-%d %H:%M}).")
        for step in services.RUN_STEPS:
            out(f"  {step:<15} {run.timings.get(step, 0):8.3f} s")
        out(
            f"Customers {run.customers}, scored {run.scored}, tier changes {run.tier_changes}, "
            f"churn tag +{run.tagged} -{run.untagged}."
        )
        if run.clv_params:
            bg, gg = run.clv_params["bgnbd"], run.clv_params["gamma_gamma"]
            out(
                f"Purchases (BG/NBD): r {bg['r']:.4f}, alpha {bg['alpha']:.4f}, a {bg['a']:.4f}, b {bg['b']:.4f}; "
                f"spend (Gamma-Gamma): p {gg['p']:.4f}, q {gg['q']:.4f}, v {gg['v']:.4f}."
            )
        if run.clv_reason:
            out(f"Purchase model: {run.get_clv_outcome_display()}. {run.clv_reason}")
        if run.churn_metrics:
            m = run.churn_metrics
            out(
                f"Churn model: AUC {m['auc']}, baseline (logistic RFM) {m['baseline_auc']}, "
                f"calibration error max {m['calibration_error_max']} points, mean {m['calibration_error_mean']}."
            )
        if run.churn_reason:
            out(f"Churn model: {run.get_churn_outcome_display()}. {run.churn_reason}")
        counts = selectors.tier_distribution()
        out("Predicted tiers: " + ", ".join(f"{row['label']} {row['count']}" for row in counts["tiers"]))
