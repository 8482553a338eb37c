"""Churn model quality on the UCI Online Retail transactions (Chen 2015, CC BY 4.0; see
shared/data/SOURCES.md), trained through the nightly run's own code path.

    .venv/bin/python bench/churn.py --cutoff 2011-09-01

Each invoice with positive quantities becomes one `order_paid` event of its customer (the
cleaning of the published analyses: known customers, positive quantities), in a database of its
own (`<DATABASE_URL's name>_churnbench`). The run is then made as of the cut-off plus the
horizon (90 days): features as of the cut-off, churn = no order in the 90 days after it, for
customers with an order before the cut-off. AUC and calibration are out of fold (customers
scored by a model that did not train on them); the baseline is a logistic regression on
recency, frequency and value alone. The last line reads

    AUC <model> baseline <logistic RFM> calibration_error <points>

where the calibration error is the largest gap, in points, between mean predicted risk and
observed churn over the ten deciles of predicted risk.

That AUC is from one random split of the customers into folds (the nightly run's). With
`--splits N` the bench also scores the same customers out of fold under N-1 further splits and
prints each, their mean and spread: on some 3,300 customers the split alone moves the AUC by up to
about 0.008, so the mean says more than any one split.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchdb import bench_database_url, ensure_database  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail.csv.gz"
if not DATA.exists():
    DATA = Path("/work/shared/data/online_retail/online_retail.csv.gz")


def load(path: Path) -> int:
    """Replace every profile and event with one customer per CustomerID and one order per invoice."""
    import pandas as pd
    from django.db import connection

    from profiles.models import Identity, Profile
    from tracking.models import Event

    lines = pd.read_csv(path, usecols=["InvoiceNo", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"])
    lines = lines[lines.CustomerID.notna() & (lines.Quantity > 0)].copy()
    lines["milli"] = (lines.UnitPrice * 1000).round().astype("int64") * lines.Quantity
    invoices = lines.groupby("InvoiceNo").agg(
        customer=("CustomerID", "first"), at=("InvoiceDate", "min"), milli=("milli", "sum")
    )
    invoices["customer"] = "retail-" + invoices.customer.astype("int64").astype(str)
    invoices["at"] = pd.to_datetime(invoices["at"]).dt.tz_localize("UTC")
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE predictions_prediction, predictions_predictionchange, predictions_predictionrun")
        cursor.execute("TRUNCATE crm_valuechange, crm_customervalue, crm_recomputerun CASCADE")
        cursor.execute("TRUNCATE profiles_identity, tracking_event, profiles_profile CASCADE")
    first_order = invoices.groupby("customer")["at"].min()
    profiles = Profile.objects.bulk_create(
        [Profile(user_id=c, signup_at=first_order[c].to_pydatetime()) for c in sorted(first_order.index)],
        batch_size=5000,
    )
    Identity.objects.bulk_create([Identity(profile=p, kind="user_id", value=p.user_id) for p in profiles], 5000)
    Event.objects.bulk_create(
        [
            Event(
                event_id=uuid.uuid4(),
                name="order_paid",
                kind="business",
                timestamp=row.at.to_pydatetime(),
                user_id=row.customer,
                properties={"order_id": str(row.Index), "amount": f"{row.milli / 1000:.3f}"},
            )
            for row in invoices.itertuples()
        ],
        batch_size=5000,
    )
    with connection.cursor() as cursor:
        for table in ("profiles_profile", "profiles_identity", "tracking_event"):
            cursor.execute(f"ANALYZE {table}")
    return len(invoices)


def splits(run, cutoff: datetime, horizon: int, n: int) -> None:
    """The run's training set again (as `predictions.services` builds it), scored out of fold
    under n splits: the run's own and n-1 others."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from predictions import churn, clv, features

    orders = features.load_orders(cutoff + timedelta(days=horizon))
    before = orders.customers_at(cutoff, recent_days=horizon)
    bought = orders.purchase_days(start=cutoff, end=cutoff + timedelta(days=horizon))
    # As the run: without a purchase model fitted at the cut-off, the churn model learns without it.
    params = (run.clv_calibration or {}).get("params")
    matrix = features.model_matrix(before, purchase_model=clv.BgNbdParams(**params) if params else None)
    churned = (~before["profile_id"].isin(bought.keys())).to_numpy().astype(int)
    if len(churned) != run.churn_metrics["customers"]:
        raise SystemExit(f"rebuilt {len(churned)} customers, the run trained on {run.churn_metrics['customers']}")
    aucs, baselines, errors = [], [], []
    for seed in [churn.SEED, *range(1, n)]:
        oof, oof_baseline = churn.out_of_fold(matrix, churned, seed=seed)
        aucs.append(roc_auc_score(churned, oof))
        baselines.append(roc_auc_score(churned, oof_baseline))
        errors.append(max(row["error"] for row in churn.calibration_deciles(churned, oof)))
        print(f"  split {seed}: AUC {aucs[-1]:.4f} baseline {baselines[-1]:.4f} calibration_error {errors[-1]:.2f}")
    print(
        f"over {n} splits: AUC mean {np.mean(aucs):.4f} (min {min(aucs):.4f}, max {max(aucs):.4f}), "
        f"baseline mean {np.mean(baselines):.4f}, calibration_error max {max(errors):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cutoff", default="2011-09-01", help="features as of this day (UTC midnight)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--splits", type=int, default=1, help="also score under this many random splits in all")
    args = parser.parse_args()
    url = bench_database_url("_churnbench")
    ensure_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.development")
    import django

    django.setup()
    from django.core.management import call_command

    from predictions import services
    from predictions.models import PredictionSettings

    call_command("migrate", verbosity=0)
    started = time.monotonic()
    orders = load(args.data)
    print(f"loaded {orders:,} orders in {time.monotonic() - started:.1f} s", flush=True)
    services.ensure_default_setup()
    horizon = 90
    PredictionSettings.objects.update(horizon_days=horizon)
    cutoff = datetime.fromisoformat(args.cutoff).replace(tzinfo=UTC)
    started = time.monotonic()
    run = services.recompute_predictions(now=cutoff + timedelta(days=horizon))
    print(f"prediction run {run.pk}: {run.status} in {time.monotonic() - started:.1f} s, steps {run.timings}")
    if run.churn_outcome != "fitted":
        raise SystemExit(f"churn model not trained: {run.churn_reason}")
    metrics = run.churn_metrics
    if metrics["customers"] == 0:
        raise SystemExit("no customers before the cut-off: nothing was measured")
    print(f"customers with an order before {args.cutoff}: {metrics['customers']:,}, churn rate {metrics['churn_rate']}")
    print("calibration by decile of predicted risk (predicted / observed, points):")
    for row in metrics["calibration"]:
        print(f"  {row['decile']:>2}: {row['predicted']:6.2f} / {row['observed']:6.2f}  ({row['customers']} customers)")
    print(
        "most telling features: " + ", ".join(f"{r['feature']} {r['importance']}" for r in metrics["importances"][:6])
    )
    print(f"mean calibration error {metrics['calibration_error_mean']} points")
    if args.splits > 1:
        splits(run, cutoff, horizon, args.splits)
    auc, baseline, error = metrics["auc"], metrics["baseline_auc"], metrics["calibration_error_max"]
    print(f"AUC {auc:.4f} baseline {baseline:.4f} calibration_error {error:.2f}")


if __name__ == "__main__":
    main()
