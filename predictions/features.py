"""What the models learn from: one row per customer as of a moment, computed from every paid
order, read once (`load_orders`), for as many moments as a run looks at.

Orders are counted as RFM counts them (`crm`): `order_paid` events, an order sent twice counting
once, refunded orders left out. Apps above `predictions` (campaigns) add features of their own,
such as how many messages a customer received lately, through `register_feature`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
from django.db import connection

from config import bulk_numbers
from tracking.selectors import order_amount_sql

# Every paid order up to the reference date, once, with the time of its refund if there was one:
# both moments a run looks at (the reference and the cut-off one horizon earlier) and the
# purchases between them are computed from these rows, read once. An order sent twice (a retried
# event under a new event id) counts once; its refund is kept with its time, so the cut-off sees
# only refunds known by then. Times are whole microseconds since 1970 (UTC), so that a moment's
# day count is an integer division; an order never refunded has the largest bigint. Amounts are
# whole millionths, so that a customer's spend adds up exactly, as money should: two customers who
# spent the same are tied, however their orders split it. An amount past what a customer's value
# can hold (14 digits) is read as that largest value, so that it cannot break the reading of the
# others; the run then fails, as before, when it writes that customer's past value.
ORDERS_SQL = """
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
SELECT o.profile_id, (extract(epoch FROM o.paid_at) * 1000000)::bigint AS paid_us,
       round(LEAST(o.amount, %(largest_amount)s) * 1000000)::bigint AS amount_micros,
       COALESCE((extract(epoch FROM r.refunded_at) * 1000000)::bigint, 9223372036854775807) AS refunded_us
FROM orders o LEFT JOIN refunds r ON r.order_id = o.order_id
"""
ORDER_COLUMNS = {"profile_id": "int8", "paid_us": "int8", "amount_micros": "int8", "refunded_us": "int8"}

# Per customer as of %(at)s: events other than orders in the 30 days before.
ACTIVITY_SQL = """
SELECT pe.profile_id, count(*)::float8, count(DISTINCT date_trunc('day', pe.timestamp))::float8
FROM profiles_profileevent pe
WHERE pe.timestamp > %(at)s - interval '30 days' AND pe.timestamp <= %(at)s AND pe.profile_id IS NOT NULL
  AND pe.name NOT IN ('order_paid', 'order_refunded')
GROUP BY pe.profile_id
"""
ACTIVITY_COLUMNS = {"profile_id": "int8", "events_30d": "float8", "active_days_30d": "float8"}

# The lifecycle stage crm recorded for each profile at %(at)s (its history, so a past moment sees
# the stage it had then), as its place in %(stages)s (0: none of them).
STAGES_SQL = """
SELECT DISTINCT ON (vc.profile_id) vc.profile_id,
       COALESCE(array_position(%(stages)s::text[], vc.to_value::text), 0)::int2
FROM crm_valuechange vc
WHERE vc.what = 'lifecycle' AND vc.at <= %(at)s
ORDER BY vc.profile_id, vc.at DESC, vc.id DESC
"""
STAGE_COLUMNS = {"profile_id": "int8", "lifecycle": "int2"}

# One row per customer: the BG/NBD summary in whole days (x repeat purchase days, t_x, T), spend,
# recent activity, the last purchase day's spend and the gaps between purchase days (the last,
# the median; NaN with one purchase day), and the lifecycle stage.
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
    # The exact spend in millionths, what the past value is stored from.
    "spend_micros",
]

DAY_US = 86_400_000_000
# The largest amount a customer's stored value holds (numeric(14, 2)).
LARGEST_AMOUNT = Decimal("999999999999.99")
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


class Orders:
    """Every paid order up to a reference moment (ORDERS_SQL), read once, from which each
    moment's customers are computed. Kept in parts that each hold whole customers (as
    `bulk_numbers.read_groups` hands them over), each sorted by customer and time of payment:
    the working copies of a computation are a part's, not every order's."""

    def __init__(self, parts: Iterable[dict[str, np.ndarray]]):
        self._parts = []
        for part in parts:
            # Sums of millionths are exact in 64 bits while no part's orders add up past them.
            largest, count = int(part["amount_micros"].max(initial=0)), len(part["amount_micros"])
            if largest * count >= 2**63:
                raise ValueError(
                    f"{count} orders of up to {largest / 1e6:,.2f} could add up past what 64 bits hold exactly"
                )
            order = np.lexsort((part["paid_us"], part["profile_id"]))
            self._parts.append({name: part[name][order] for name in ORDER_COLUMNS})

    def __len__(self) -> int:
        return sum(len(part["profile_id"]) for part in self._parts)

    def customers_at(self, at: datetime, *, recent_days: int = 90) -> pd.DataFrame:
        """Every customer as of `at` (not after the moment the orders were read at), one row
        each (see CUSTOMER_COLUMNS), ordered by profile id. Purchases count per day (days before
        `at`, 24 hours each), as the model's repeat purchases do."""
        at_us = _microseconds(at)
        found = [columns for part in self._parts if (columns := _customers(part, at_us, recent_days)) is not None]
        if not found:
            empty = {name: np.zeros(0) for name in CUSTOMER_COLUMNS if name not in ("lifecycle", *ACTIVITY_COLUMNS)}
            integers = {"profile_id": np.zeros(0, dtype=np.int64), "spend_micros": np.zeros(0, dtype=np.int64)}
            return self._with_activity({**empty, **integers}, at)
        columns = {name: np.concatenate([part[name] for part in found]) for name in found[0]}
        order = np.argsort(columns["profile_id"], kind="stable")
        return self._with_activity({name: values[order] for name, values in columns.items()}, at)

    def _with_activity(self, columns: dict[str, np.ndarray], at: datetime) -> pd.DataFrame:
        """The customers' columns with what the database knows of them besides orders: activity,
        the lifecycle stage and the registered features."""
        profile_ids = pd.Series(columns.pop("profile_id"), dtype="int64")
        params = {"at": at, "stages": list(LIFECYCLE_STAGES)}
        activity = _read_by_profile(ACTIVITY_SQL, params, ACTIVITY_COLUMNS, profile_ids)
        stage = _read_by_profile(STAGES_SQL, params, STAGE_COLUMNS, profile_ids)["lifecycle"]
        frame = pd.DataFrame(
            {
                "profile_id": profile_ids,
                **{
                    name: values if name == "spend_micros" else values.astype(float) for name, values in columns.items()
                },
                **activity,
                "lifecycle": np.array(("", *LIFECYCLE_STAGES), dtype=object)[stage.astype(int)],
            }
        )[CUSTOMER_COLUMNS]
        for name in registered_features():
            frame[name] = _extra(_features[name], at, profile_ids)
        return frame

    def purchase_days(self, *, start: datetime, end: datetime) -> dict[int, int]:
        """Days of purchase (calendar days, UTC) per customer in (start, end], orders not refunded
        by `end`: what the holdout's predictions are compared with, and what "churned" means for
        training."""
        start_us, end_us = _microseconds(start), _microseconds(end)
        bought: dict[int, int] = {}
        for part in self._parts:
            paid = part["paid_us"]
            chosen = (paid > start_us) & (paid <= end_us) & (part["refunded_us"] > end_us)
            pid, day = part["profile_id"][chosen], paid[chosen] // DAY_US
            if not len(pid):
                continue
            new_day = np.r_[True, (pid[1:] != pid[:-1]) | (day[1:] != day[:-1])]
            customers, counts = np.unique(pid[new_day], return_counts=True)
            bought.update(zip(customers.tolist(), counts.tolist(), strict=True))
        return bought


def _customers(part: dict[str, np.ndarray], at_us: int, recent_days: int) -> dict[str, np.ndarray] | None:
    """The order-derived columns of the customers in `part` (sorted by customer and time of
    payment) as of `at_us`; None when none had bought by then."""
    known = (part["paid_us"] <= at_us) & (part["refunded_us"] > at_us)  # paid by then, not refunded
    pid, amount = part["profile_id"][known], part["amount_micros"][known]
    if not len(pid):
        return None
    age = (at_us - part["paid_us"][known]) // DAY_US  # within a customer, oldest first
    # Purchase days: runs of one customer and one age.
    day = np.flatnonzero(np.r_[True, (pid[1:] != pid[:-1]) | (age[1:] != age[:-1])])
    day_pid, day_age = pid[day], age[day]
    day_orders = np.diff(np.r_[day, len(pid)]).astype(float)
    day_micros = np.add.reduceat(amount, day)
    day_amount = day_micros / 1e6
    # Customers: runs of days of one profile; their first day is the oldest, their last the latest.
    starts = np.r_[True, day_pid[1:] != day_pid[:-1]]
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], len(day)] - 1
    days = (last - first + 1).astype(float)

    def per_customer(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, first)

    recent = day_age < recent_days
    before = (day_age >= recent_days) & (day_age < 2 * recent_days)
    spend_micros = np.add.reduceat(day_micros, first)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Gamma-Gamma models the spend of repeat purchases: the first day's is left out.
        repeat_mean = np.where(days > 1, (spend_micros - day_micros[first]) / 1e6 / (days - 1), np.nan)
    # The gap in days before each purchase day but a customer's first: the last one, and
    # their median.
    gap_before = np.r_[0, day_age[:-1] - day_age[1:]]
    customer_of_day = np.cumsum(starts) - 1
    gaps, gap_customer = gap_before[~starts], customer_of_day[~starts]
    last_gap = np.where(days > 1, gap_before[last], np.nan)
    return {
        "profile_id": day_pid[first],
        "x": days - 1,
        "t_x": (day_age[first] - day_age[last]).astype(float),
        "T": day_age[first].astype(float),
        "recency_days": day_age[last].astype(float),
        "orders": per_customer(day_orders),
        "spend": spend_micros / 1e6,
        "repeat_mean": repeat_mean,
        "orders_recent": per_customer(day_orders * recent),
        "orders_before": per_customer(day_orders * before),
        "spend_recent": per_customer(day_micros * recent) / 1e6,
        "last_amount": day_amount[last],
        "last_gap": last_gap,
        "median_gap": _medians(gaps, gap_customer, len(first)),
        "spend_micros": spend_micros,
    }


def load_orders(at: datetime) -> Orders:
    """Every paid order up to `at` (ORDERS_SQL)."""
    sql = ORDERS_SQL.replace("{amount}", order_amount_sql("pe.properties"))
    return Orders(bulk_numbers.read_groups(sql, {"at": at, "largest_amount": LARGEST_AMOUNT}, ORDER_COLUMNS))


def _medians(values: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    """The median of each group's values (the mean of the middle two for an even count, as
    percentile_cont(0.5)), NaN for a group without values; `group` numbers each value's group."""
    return pd.Series(values, dtype=float).groupby(group).median().reindex(range(groups)).to_numpy()


def _read_by_profile(
    sql: str, params: dict[str, Any], columns: dict[str, str], profile_ids: pd.Series
) -> dict[str, np.ndarray]:
    """A per-profile statement's columns, lined up with `profile_ids` (0 where it has no row)."""
    read = bulk_numbers.read_columns(sql, params, columns)
    position = pd.Index(read.pop("profile_id")).get_indexer(profile_ids)
    found = position >= 0
    out = {}
    for name, values in read.items():
        column = np.zeros(len(profile_ids), dtype=values.dtype)
        column[found] = values[position[found]]
        out[name] = column
    return out


def _extra(feature: Feature, at: datetime, profile_ids: pd.Series) -> np.ndarray:
    with connection.cursor() as cursor:
        cursor.execute(feature.sql, {"at": at})
        values = dict(cursor.fetchall())
    return profile_ids.map(values).fillna(0).to_numpy(dtype=float)


def _microseconds(at: datetime) -> int:
    """`at` as whole microseconds since 1970 (UTC), exactly as `paid_us` is stored."""
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


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
