"""What the models learn from: one row per customer as of a moment, read in one statement.

Orders are counted as RFM counts them (`crm`): `order_paid` events, an order sent twice counting
once, refunded orders left out. Apps above `predictions` (campaigns) add features of their own,
such as how many messages a customer received lately, through `register_feature`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from django.db import connection

from tracking.selectors import order_amount_sql

# Every paid order up to the reference date, once: both moments a run looks at (the reference and
# the cut-off one horizon earlier) and the purchases between them are read from this table rather
# than from the events again. An order sent twice (a retried event under a new event id) counts
# once; its refund is kept with its time, so the cut-off sees only refunds known by then.
ORDERS_SQL = """
CREATE TEMP TABLE pred_orders ON COMMIT DROP AS
WITH orders AS (
    SELECT pe.profile_id,
           COALESCE(NULLIF(pe.properties->>'order_id', ''), pe.event_id::text) AS order_id,
           min(pe.timestamp) AS paid_at,
           max({amount}) AS amount
    FROM profiles_profileevent pe
    WHERE pe.name = 'order_paid' AND pe.timestamp <= %(at)s AND pe.profile_id IS NOT NULL
    GROUP BY 1, 2
),
refunds AS (
    SELECT pe.properties->>'order_id' AS order_id, min(pe.timestamp) AS refunded_at
    FROM profiles_profileevent pe
    WHERE pe.name = 'order_refunded' AND pe.timestamp <= %(at)s AND pe.properties->>'order_id' <> ''
    GROUP BY 1
)
SELECT o.profile_id, o.paid_at, o.amount, r.refunded_at
FROM orders o LEFT JOIN refunds r ON r.order_id = o.order_id
"""

# Per customer (a profile with a paid order at or before %(at)s, not refunded by then): the
# BG/NBD summary in whole days (x repeat purchase days, t_x, T), spend, recent activity, the last
# purchase day's spend and the gaps between purchase days (the last, the median), and the
# lifecycle stage recorded for it at that moment (crm's history, so a past moment sees the stage
# it had then). Reads `pred_orders`.
CUSTOMERS_SQL = """
WITH days AS (
    -- Purchases are counted per day, as the model's repeat purchases are.
    SELECT o.profile_id, floor(extract(epoch FROM (%(at)s - o.paid_at)) / 86400)::int AS age,
           count(*) AS orders, sum(o.amount) AS amount
    FROM pred_orders o
    WHERE o.paid_at <= %(at)s AND (o.refunded_at IS NULL OR o.refunded_at > %(at)s)
    GROUP BY 1, 2
),
ranked AS (
    -- Each purchase day with its place from the last (1) and the days since the one before it
    -- (NULL for the first day): one sort, from which every per-customer figure below is read.
    SELECT d.*, row_number() OVER w AS from_last, lead(d.age) OVER w - d.age AS gap
    FROM days d
    WINDOW w AS (PARTITION BY d.profile_id ORDER BY d.age)
),
customers AS (
    SELECT d.profile_id,
           count(*) - 1 AS x,
           max(d.age) - min(d.age) AS t_x,
           max(d.age) AS t,
           min(d.age) AS recency_days,
           sum(d.orders) AS orders,
           sum(d.amount) AS spend,
           -- Gamma-Gamma models the spend of repeat purchases: the first day's is left out.
           (sum(d.amount) - sum(d.amount) FILTER (WHERE d.gap IS NULL)) / nullif(count(*) - 1, 0) AS repeat_mean,
           sum(d.orders) FILTER (WHERE d.age < %(recent_days)s) AS orders_recent,
           sum(d.orders) FILTER (WHERE d.age >= %(recent_days)s AND d.age < 2 * %(recent_days)s) AS orders_before,
           sum(d.amount) FILTER (WHERE d.age < %(recent_days)s) AS spend_recent,
           sum(d.amount) FILTER (WHERE d.from_last = 1) AS last_amount,
           sum(d.gap) FILTER (WHERE d.from_last = 1) AS last_gap,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY d.gap) AS median_gap
    FROM ranked d
    GROUP BY d.profile_id
),
activity AS (
    SELECT pe.profile_id, count(*) AS events_30d,
           count(DISTINCT date_trunc('day', pe.timestamp)) AS active_days_30d
    FROM profiles_profileevent pe
    WHERE pe.timestamp > %(at)s - interval '30 days' AND pe.timestamp <= %(at)s AND pe.profile_id IS NOT NULL
      AND pe.name NOT IN ('order_paid', 'order_refunded')
    GROUP BY pe.profile_id
),
stages AS (
    SELECT DISTINCT ON (vc.profile_id) vc.profile_id, vc.to_value AS lifecycle
    FROM crm_valuechange vc
    WHERE vc.what = 'lifecycle' AND vc.at <= %(at)s
    ORDER BY vc.profile_id, vc.at DESC, vc.id DESC
)
-- Floats, not numerics: the models compute in floats, and a Decimal per value costs time when a
-- million rows are read.
SELECT c.profile_id, c.x::float8, c.t_x::float8, c.t::float8, c.recency_days::float8, c.orders::float8,
       c.spend::float8, c.repeat_mean::float8,
       COALESCE(c.orders_recent, 0)::float8, COALESCE(c.orders_before, 0)::float8,
       COALESCE(c.spend_recent, 0)::float8, COALESCE(a.events_30d, 0)::float8,
       COALESCE(a.active_days_30d, 0)::float8, c.last_amount::float8, c.last_gap::float8,
       c.median_gap::float8, COALESCE(s.lifecycle, '')
FROM customers c
LEFT JOIN activity a ON a.profile_id = c.profile_id
LEFT JOIN stages s ON s.profile_id = c.profile_id
ORDER BY c.profile_id
"""

CUSTOMER_COLUMNS = [
    "profile_id",
    "x",
    "t_x",
    "T",
    "recency_days",
    "orders",
    "spend",
    "repeat_mean",
    "orders_recent",
    "orders_before",
    "spend_recent",
    "events_30d",
    "active_days_30d",
    "last_amount",
    "last_gap",
    "median_gap",
    "lifecycle",
]

# Days of purchase per customer in (%(start)s, %(end)s], orders not refunded by %(end)s: what the
# holdout's predictions are compared with, and what "churned" means for training.
PURCHASE_DAYS_SQL = """
SELECT o.profile_id, count(DISTINCT date_trunc('day', o.paid_at))
FROM pred_orders o
WHERE o.paid_at > %(start)s AND o.paid_at <= %(end)s AND (o.refunded_at IS NULL OR o.refunded_at > %(end)s)
GROUP BY o.profile_id
"""

LIFECYCLE_STAGES = ("new", "active", "silent", "churned", "reactivated")


@dataclass(frozen=True)
class Feature:
    """A feature another app provides: `sql` selects (profile_id, value) as of %(at)s."""

    name: str
    sql: str


_features: dict[str, Feature] = {}


def register_feature(name: str, sql: str) -> None:
    """Add (or replace) a feature, from the providing app's AppConfig.ready(). Customers the
    statement does not list get 0."""
    _features[name] = Feature(name=name, sql=sql)


def registered_features() -> list[str]:
    return sorted(_features)


def load_orders(at: datetime) -> None:
    """Fill this transaction's `pred_orders` with every paid order up to `at` (ORDERS_SQL)."""
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS pred_orders")
        cursor.execute(ORDERS_SQL.replace("{amount}", order_amount_sql("pe.properties")), {"at": at})
        cursor.execute("ANALYZE pred_orders")


def customers_at(at: datetime, *, recent_days: int = 90) -> pd.DataFrame:
    """Every customer as of `at` (not after the moment `load_orders` was given), one row each
    (see CUSTOMERS_SQL), ordered by profile id."""
    with connection.cursor() as cursor:
        cursor.execute(CUSTOMERS_SQL, {"at": at, "recent_days": recent_days})
        rows = cursor.fetchall()
    frame = pd.DataFrame(rows, columns=CUSTOMER_COLUMNS)
    # Money goes back to the database as Decimal (rounded to cents) when the scores are written.
    for column in CUSTOMER_COLUMNS[1:-1]:
        frame[column] = frame[column].astype(float)
    frame["profile_id"] = frame["profile_id"].astype("int64")
    for name in registered_features():
        frame[name] = _extra(_features[name], at, frame["profile_id"])
    return frame


def _extra(feature: Feature, at: datetime, profile_ids: pd.Series) -> np.ndarray:
    with connection.cursor() as cursor:
        cursor.execute(feature.sql, {"at": at})
        values = dict(cursor.fetchall())
    return np.array([float(values.get(pid, 0) or 0) for pid in profile_ids], dtype=float)


def purchase_days(*, start: datetime, end: datetime) -> dict[int, int]:
    with connection.cursor() as cursor:
        cursor.execute(PURCHASE_DAYS_SQL, {"start": start, "end": end})
        return dict(cursor.fetchall())


def model_matrix(customers: pd.DataFrame, *, purchase_model: Any = None) -> pd.DataFrame:
    """The churn model's inputs: behaviour (recency, frequency, value, trend, activity), the
    lifecycle stage one-hot, the registered features, and what the purchase model (BG/NBD fitted
    on the same history, `clv.BgNbdParams`) says of each customer: the probability of still
    being active and the purchases expected in the next 90 days (left out without a purchase
    model: a model trained with them then reads them as unknown, see `ChurnModel.risk`)."""
    frame = pd.DataFrame(
        {
            "recency_days": customers["recency_days"].astype(float),
            "tenure_days": customers["T"].astype(float),
            "orders": customers["orders"].astype(float),
            "purchase_days": customers["x"].astype(float) + 1,
            "spend": customers["spend"],
            "average_order": customers["spend"] / customers["orders"].clip(lower=1),
            "orders_recent": customers["orders_recent"].astype(float),
            "orders_trend": customers["orders_recent"].astype(float) - customers["orders_before"].astype(float),
            "spend_recent": customers["spend_recent"],
            "days_between_purchases": customers["t_x"].astype(float) / customers["x"].clip(lower=1),
            "events_30d": customers["events_30d"].astype(float),
            "active_days_30d": customers["active_days_30d"].astype(float),
            # The last purchase day's spend, and how late the customer is against their own
            # rhythm: unknown (NaN) for one purchase day, which the trees treat as its own case.
            "last_amount": customers["last_amount"].astype(float),
            "last_gap": customers["last_gap"].astype(float),
            "lateness": customers["recency_days"] / customers["median_gap"].where(customers["median_gap"] > 0),
        }
    )
    for stage in LIFECYCLE_STAGES:
        frame[f"stage_{stage}"] = (customers["lifecycle"] == stage).astype(float)
    for name in registered_features():
        frame[name] = customers[name].astype(float)
    if purchase_model is not None and len(customers):
        from predictions import clv

        x, t_x, T = customers["x"], customers["t_x"], customers["T"]
        frame["p_alive"] = clv.probability_alive(purchase_model, x, t_x, T)
        frame["expected_purchases_90d"] = clv.expected_purchases(purchase_model, 90, x, t_x, T)
    return frame
