"""What the models read of a customer: the purchase-day summary, the last day's spend and how late
the customer is against their own rhythm, as of a moment."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from django.utils import timezone

from crm.models import ValueChange
from predictions import features
from tests.factories.crm import CustomerFactory, paid_order, refund
from tests.factories.tracking import EventFactory

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


def test_activity_and_the_lifecycle_stage_are_as_of_the_moment():
    now = timezone.now().replace(microsecond=0)
    customer = CustomerFactory()
    paid_order(customer, "10.00", now - timedelta(days=40))
    # Two events on one day and one on another within 30 days; one older; orders never count.
    for ago in (timedelta(days=3, hours=1), timedelta(days=3, hours=2), timedelta(days=20), timedelta(days=31)):
        EventFactory(name="page_view", user_id=customer.user_id, timestamp=now - ago)
    for at, stage in [(now - timedelta(days=50), "new"), (now - timedelta(days=10), "active")]:
        ValueChange.objects.create(profile=customer, what="lifecycle", to_value=stage, at=at)
    ValueChange.objects.create(profile=customer, what="lifecycle", to_value="silent", at=now + timedelta(days=1))
    quiet = CustomerFactory()
    paid_order(quiet, "5.00", now - timedelta(days=5))
    ValueChange.objects.create(profile=quiet, what="lifecycle", to_value="something-else", at=now - timedelta(days=1))

    row = read(now).loc[customer.pk]
    assert (row["events_30d"], row["active_days_30d"], row["lifecycle"]) == (3, 2, "active")
    then = read(now - timedelta(days=20)).loc[customer.pk]
    # 20 days earlier: the event 31 days ago is 11 days old then, the ones 3 days ago are to come.
    assert (then["events_30d"], then["active_days_30d"], then["lifecycle"]) == (2, 2, "new")
    other = read(now).loc[quiet.pk]
    assert (other["events_30d"], other["active_days_30d"], other["lifecycle"]) == (0, 0, "")


def test_purchase_days_count_calendar_days_of_orders_not_refunded_by_the_end():
    start = timezone.now().replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=30)
    end = start + timedelta(days=20)
    customer, other = CustomerFactory(), CustomerFactory()
    paid_order(customer, "1.00", start)  # at the start: not after it
    paid_order(customer, "1.00", start + timedelta(days=1, hours=1))
    paid_order(customer, "1.00", start + timedelta(days=1, hours=2))  # the same day
    paid_order(customer, "1.00", start + timedelta(days=2), order_id="refunded-in-time")
    refund(customer, "refunded-in-time", end - timedelta(hours=1))
    paid_order(customer, "1.00", start + timedelta(days=3), order_id="refunded-later")
    refund(customer, "refunded-later", end + timedelta(days=1))
    paid_order(customer, "1.00", end)  # at the end: counts
    paid_order(customer, "1.00", end + timedelta(seconds=1))
    paid_order(other, "1.00", start - timedelta(days=1))

    bought = features.load_orders(end + timedelta(days=5)).purchase_days(start=start, end=end)
    # Days 1 and 3 after the start, and the end's.
    assert bought == {customer.pk: 3}


def test_spend_adds_up_exactly_however_the_orders_split_it():
    now = timezone.now().replace(microsecond=0)
    one, split = CustomerFactory(), CustomerFactory()
    paid_order(one, "39.99", now - timedelta(days=3))
    paid_order(split, "29.99", now - timedelta(days=3))
    paid_order(split, "10.00", now - timedelta(days=2))  # 29.99 + 10.00 in floats is 39.989999...
    frame = read(now)
    assert frame.loc[one.pk, "spend_micros"] == frame.loc[split.pk, "spend_micros"] == 39_990_000
    assert frame.loc[one.pk, "spend"] == frame.loc[split.pk, "spend"] == 39.99


def test_an_amount_past_what_a_value_holds_does_not_break_the_reading_of_the_others():
    now = timezone.now().replace(microsecond=0)
    mistaken, other = CustomerFactory(), CustomerFactory()
    # 10 trillion: a valid amount string, but past 64 bits in millionths. Refunded at once.
    paid_order(mistaken, "9999999999999.00", now - timedelta(days=5), order_id="typo")
    refund(mistaken, "typo", now - timedelta(days=4))
    paid_order(mistaken, "12.00", now - timedelta(days=3))
    paid_order(other, "7.50", now - timedelta(days=2))
    frame = read(now)
    assert frame.loc[mistaken.pk, "spend"] == 12 and frame.loc[other.pk, "spend"] == 7.5
