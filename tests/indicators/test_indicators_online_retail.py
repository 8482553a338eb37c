"""Indicators on real data, against published numbers: the UCI Online Retail transactions (Chen
2015, CC BY 4.0; see shared/data/SOURCES.md), one `order_paid` event per invoice of a customer,
bulk-loaded, then folded by the rollups (and shipped to ClickHouse) as the beat jobs would; the
published tables come out of both events stores."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from django.db import connection

from indicators import analyses, rollups
from indicators import registry as indicators
from tracking.models import Event
from tracking.shipping import queue_for_shipping

pytestmark = pytest.mark.django_db(transaction=True)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "online_retail" / "online_retail.csv.gz"
if not DATA.exists():  # the checkout may sit elsewhere; the shared folder is at a fixed place
    DATA = Path("/work/shared/data/online_retail/online_retail.csv.gz")


@pytest.fixture(scope="module")
def lines() -> pd.DataFrame:
    return pd.read_csv(DATA)


def load_invoices(lines: pd.DataFrame, engine) -> int:
    """One `order_paid` per invoice: its customer, first line's time and amount."""
    lines = lines.assign(milli=(lines.UnitPrice * 1000).round().astype("int64") * lines.Quantity)
    invoices = lines.groupby("InvoiceNo").agg(
        customer=("CustomerID", "first"), at=("InvoiceDate", "min"), milli=("milli", "sum")
    )
    invoices["at"] = pd.to_datetime(invoices["at"]).dt.tz_localize("UTC")
    stored = Event.objects.bulk_create(
        [
            Event(
                event_id=uuid.uuid4(),
                name="order_paid",
                kind="business",
                timestamp=row.at.to_pydatetime(),
                user_id=f"retail-{int(row.customer)}",
                properties={"order_id": str(row.Index), "amount": f"{Decimal(int(row.milli)) / 1000:.2f}"},
            )
            for row in invoices.itertuples()
        ],
        batch_size=5000,
    )
    rollups.queue_stored_events([e.pk for e in stored])  # as ingestion queues what it stores
    queue_for_shipping([e.pk for e in stored])
    # Statistics, as autovacuum gathers them after a bulk load in a live database (its minute-long
    # nap is longer than this test): without them the fold plans its reads for an empty table.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tracking_event")
    engine.ready()
    return len(invoices)


def test_monthly_cohorts_by_first_purchase_match_the_published_analysis(lines, events_engine):
    # Cleaning 2 (HarshTanwar001/Cohort-Analysis): dropna, drop_duplicates, Quantity > 0, UnitPrice > 0.
    clean = lines.dropna().drop_duplicates()
    clean = clean[(clean.Quantity > 0) & (clean.UnitPrice > 0)]
    assert (len(clean), clean.CustomerID.nunique()) == (392_692, 4_338)
    load_invoices(clean, events_engine)

    cohorts = analyses.retention_cohorts(
        granularity="month", basis="purchase", start=date(2010, 12, 1), end=date(2011, 12, 31), periods=12
    )

    assert [c["size"] for c in cohorts] == [885, 417, 380, 452, 300, 284, 242, 188, 169, 299, 358, 323, 41]
    december = [str(p["percent"]) for p in cohorts[0]["retention"]]
    assert december == ["36.6", "32.3", "38.4", "36.3", "39.8", "36.3", "34.9", "35.4", "39.5", "37.4", "50.3", "26.6"]
    # Every event here is an order, so cohorts by first activity are the same people.
    by_activity = analyses.retention_cohorts(
        granularity="month", basis="activity", start=date(2010, 12, 1), end=date(2011, 12, 31), periods=12
    )
    assert by_activity == cohorts


def test_daily_active_purchasers_match_the_reference_numbers(lines, events_engine):
    # Cleaning 1 (Ganeshreddy16/customer-segmentation-analysis): known customers, Quantity > 0.
    clean = lines[lines.CustomerID.notna() & (lines.Quantity > 0)]
    assert (len(clean), clean.CustomerID.nunique()) == (397_924, 4_339)
    load_invoices(clean, events_engine)

    series = indicators.daily_values("paying_users", start=date(2010, 12, 1), end=date(2011, 12, 9))
    active = [(day, value) for day, value in series if value > 0]

    assert len(active) == 305
    assert (sum(v for _d, v in active) / len(active)).quantize(Decimal("0.01")) == Decimal("54.97")
    assert max(active, key=lambda pair: pair[1]) == (date(2011, 11, 17), Decimal(125))
    assert indicators.daily_values("dau", start=date(2011, 11, 17), end=date(2011, 11, 17)) == [
        (date(2011, 11, 17), Decimal(125))
    ]
