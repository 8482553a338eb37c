"""Nightly prediction run against the RFM recompute on the same data.

    .venv/bin/python bench/predictions.py                  # 1,000,000 customers, 5,000,000 orders
    .venv/bin/python bench/predictions.py --scale 0.1      # 100,000 customers, 500,000 orders

Data as `bench/rfm.py` generates it (its generator, in a database of its own,
`<DATABASE_URL's name>_predbench`, kept between runs of the same size). Each night (--repeat):
the RFM recompute (`crm.services.recompute_customer_values`) runs, then the prediction run
(`predictions.services.recompute_predictions`: both customer reads, the BG/NBD and Gamma-Gamma
fits and the holdout, the churn model with its out-of-fold evaluation, scoring, the write of
every customer's row, tiers and history, and the churn tag), a day later each night. The ratio
is prediction time over RFM time; target: at most 3.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchdb import bench_database_url, ensure_database  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=5_000_000)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply --customers and --orders (e.g. 0.1)")
    parser.add_argument("--repeat", type=int, default=2, help="nights, each timing both (default 2)")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--seed", type=float, default=0.42)
    args = parser.parse_args()
    customers, orders = int(args.customers * args.scale), int(args.orders * args.scale)
    url = bench_database_url("_predbench")
    ensure_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.development")
    import django

    django.setup()
    import rfm
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from crm import services as crm_services
    from crm.models import ScoringScheme
    from predictions import services

    call_command("migrate", verbosity=0)
    if args.regenerate or not rfm.have_data(customers, orders):
        rfm.generate(customers, orders, args.seed)
    crm_services.ensure_default_setup()
    services.ensure_default_setup()
    ScoringScheme.objects.filter(is_active=True).update(reference_at=None, window_days=365, method="quintiles")
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE predictions_prediction, predictions_predictionchange, predictions_predictionrun")
        cursor.execute("TRUNCATE crm_valuechange, crm_customervalue, crm_recomputerun CASCADE")
    ref = timezone.now()
    crm_services.recompute_customer_values(now=ref)  # the first night fills crm's tables
    ours, theirs = [], []
    for night in range(1, args.repeat + 1):
        ref = ref + timedelta(days=1)
        started = time.monotonic()
        crm_services.recompute_customer_values(now=ref)
        theirs.append(time.monotonic() - started)
        started = time.monotonic()
        run = services.recompute_predictions(now=ref)
        ours.append(time.monotonic() - started)
        if run.status != "done" or run.scored == 0 or run.clv_outcome != "fitted" or run.churn_outcome != "fitted":
            raise SystemExit(
                f"the prediction run did no real work: {run.status}, {run.scored} scored, "
                f"{run.clv_reason} {run.churn_reason} {run.error}"
            )
        print(
            f"night {night}: RFM {theirs[-1]:.1f} s, predictions {ours[-1]:.1f} s "
            f"({run.scored:,} customers scored, AUC {run.churn_metrics['auc']}), steps {run.timings}",
            flush=True,
        )
    print(f"{customers:,} profiles, {orders:,} orders, {run.customers:,} customers")
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(
        f"RFM recompute median {statistics.median(theirs):.1f} s, prediction run median "
        f"{statistics.median(ours):.1f} s: ratio {ratio:.2f} (target <= 3)"
    )


if __name__ == "__main__":
    main()
