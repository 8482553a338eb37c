"""What the models read of a customer: the purchase-day summary, the last day's spend and how late
the customer is against their own rhythm, as of a moment."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from django.utils import timezone

from predictions import features
from tests.factories.crm import CustomerFactory, paid_order, refund

pytestmark = pytest.mark.django_db


def read(at):
    return features.load_orders(at).customers_at(at, recent_days=90).set_index("profile_id")


def test_a_customers_days_give_the_summary_the_last_days_spend_and_the_gaps_between_days():
    now = timezone.now().replace(microsecond=0)
    regular = CustomerFactory()
    # Purchase days 100, 60, 50 and 10 days ago (two orders on the last one): gaps of 40, 10, 40.
    for days_ago, amount in [(100, "30.00"), (60, "20.00"), (50, "10.00"), (10, "5.00"), (10, "7.50")]:
        paid_order(regular, amount, now - timedelta(days=days_ago, hours=1))
    once = CustomerFactory()
    paid_order(once, "99.00", now - timedelta(days=20, hours=1))

    frame = read(now)
    row = frame.loc[regular.pk]
    assert (row["x"], row["t_x"], row["T"], row["recency_days"], row["orders"]) == (3, 90, 100, 10, 5)
    # The first day is left out of the repeat purchases' mean spend.
    assert row.repeat_mean == pytest.approx((20 + 10 + 12.5) / 3)
    assert (row.last_amount, row.last_gap, row.median_gap) == (12.5, 40, 40)
    matrix = features.model_matrix(frame)
    assert matrix.loc[regular.pk, "lateness"] == pytest.approx(10 / 40)

    single = frame.loc[once.pk]
    assert single.last_amount == 99 and math.isnan(single.last_gap) and math.isnan(single.median_gap)
    assert math.isnan(matrix.loc[once.pk, "lateness"])
    assert math.isnan(single.repeat_mean)


def test_a_past_moment_sees_only_what_was_known_then():
    now = timezone.now().replace(microsecond=0)
    customer = CustomerFactory()
    for days_ago, amount in [(100, "30.00"), (60, "20.00"), (10, "5.00")]:
        paid_order(customer, amount, now - timedelta(days=days_ago, hours=1))
    # Paid 40 days ago, refunded 5 days ago: an order 30 days ago, gone today.
    paid_order(customer, "8.00", now - timedelta(days=40, hours=1), order_id="later-refunded")
    refund(customer, "later-refunded", now - timedelta(days=5))

    then = read(now - timedelta(days=30)).loc[customer.pk]
    # Purchase days then: 100, 60 and 40 days ago (70, 30 and 10 days before that moment).
    assert (then["x"], then["recency_days"], then["last_amount"]) == (2, 10, 8)
    assert (then["last_gap"], then["median_gap"]) == (20, 30)
    today = read(now).loc[customer.pk]
    assert (today["x"], today["recency_days"], today["last_amount"], today["last_gap"]) == (2, 10, 5, 50)
    assert today["median_gap"] == 45
