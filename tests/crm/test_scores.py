"""RFM scores, segments and tiers from paid orders, as the recompute writes them."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from crm import selectors, services
from crm.models import CustomerValue, ScoringMethod, ScoringScheme
from profiles.models import Identity, Profile
from tests.factories.crm import CustomerFactory, paid_order, refund
from tracking.models import Event

pytestmark = pytest.mark.django_db


def scheme(**fields) -> ScoringScheme:
    active = ScoringScheme.objects.get(is_active=True)
    for name, value in fields.items():
        setattr(active, name, value)
    active.save()
    return active


def value(profile) -> CustomerValue:
    return CustomerValue.objects.select_related("tier").get(profile=profile)


def test_recency_frequency_and_monetary_count_paid_orders_in_the_window():
    now = timezone.now()
    alice = CustomerFactory()
    paid_order(alice, "20.00", now - timedelta(days=3, hours=1))
    paid_order(alice, "5.50", now - timedelta(days=10))
    paid_order(alice, "100.00", now - timedelta(days=400))  # before the 365-day window

    services.recompute_customer_values(now=now)

    row = value(alice)
    assert (row.recency_days, row.frequency, row.monetary) == (3, 2, Decimal("25.50"))


def test_a_night_that_only_moves_the_reference_date_rewrites_nothing_yet_recency_moves_on():
    now = timezone.now()
    erin = CustomerFactory(last_seen_at=now - timedelta(hours=1))
    paid_order(erin, "10.00", now - timedelta(days=3, hours=1))
    services.recompute_customer_values(now=now)
    before = CustomerValue.objects.with_recency().get(profile=erin)

    night = services.recompute_customer_values(now=now + timedelta(days=1))

    after = CustomerValue.objects.with_recency().get(profile=erin)
    assert after.computed_at == before.computed_at  # the row was not rewritten
    assert night.changes == 0
    assert (before.recency_days, after.recency_days, value(erin).recency_days) == (3, 4, 4)
    assert selectors.rfm_of(Profile.objects.get(pk=erin.pk))["recency_days"] == 4


def test_refunded_order_no_longer_counts():
    now = timezone.now()
    bob = CustomerFactory()
    paid_order(bob, "30.00", now - timedelta(days=2), order_id="keep")
    paid_order(bob, "70.00", now - timedelta(days=1), order_id="gone")
    refund(bob, "gone", now - timedelta(hours=5))

    services.recompute_customer_values(now=now)

    row = value(bob)
    assert (row.frequency, row.monetary, row.recency_days) == (1, Decimal("30.00"), 2)


def test_the_same_order_sent_twice_counts_once():
    now = timezone.now()
    carol = CustomerFactory()
    paid_order(carol, "12.00", now - timedelta(days=1), order_id="o-1")
    paid_order(carol, "12.00", now - timedelta(days=1), order_id="o-1")

    services.recompute_customer_values(now=now)

    assert (value(carol).frequency, value(carol).monetary) == (1, Decimal("12.00"))


def test_the_window_is_the_schemes_setting():
    now = timezone.now()
    erin = CustomerFactory()
    paid_order(erin, "10.00", now - timedelta(days=20))
    paid_order(erin, "10.00", now - timedelta(days=40))
    scheme(window_days=30)

    services.recompute_customer_values(now=now)

    assert value(erin).frequency == 1


def test_scores_run_from_1_to_5_with_5_for_the_most_recent_frequent_and_spending():
    now = timezone.now()
    customers = []
    for i in range(10):  # customer i: i+1 orders of (i+1)*10, last one 10-i days ago
        person = CustomerFactory()
        for k in range(i + 1):
            paid_order(person, str((i + 1) * 10), now - timedelta(days=10 - i + k * 20))
        customers.append(person)

    services.recompute_customer_values(now=now)

    scores = [(value(p).r, value(p).f, value(p).m) for p in customers]
    # Ten distinct values: two customers per quintile, the best two scoring 5.
    expected = [(s, s, s) for s in (1, 1, 2, 2, 3, 3, 4, 4, 5, 5)]
    assert scores == expected


def test_tied_customers_share_the_score_of_the_first_of_them():
    now = timezone.now()
    once = [CustomerFactory() for _ in range(6)]
    for person in once:
        paid_order(person, "10.00", now - timedelta(days=1))
    twice = [CustomerFactory() for _ in range(4)]
    for person in twice:
        paid_order(person, "10.00", now - timedelta(days=1))
        paid_order(person, "10.00", now - timedelta(days=2))

    services.recompute_customer_values(now=now)

    assert {value(p).f for p in once} == {1}
    # rank 7 of 10: percent rank 6/9 = 0.667, in (0.6, 0.8]
    assert {value(p).f for p in twice} == {4}


def test_segments_compare_each_score_with_the_bases_mean_score():
    now = timezone.now()
    best = CustomerFactory()
    for k in range(3):
        paid_order(best, "500.00", now - timedelta(days=1 + k))
    lapsed_big = CustomerFactory()
    paid_order(lapsed_big, "900.00", now - timedelta(days=300))
    small = [CustomerFactory() for _ in range(3)]
    for n, person in enumerate(small):
        paid_order(person, "5.00", now - timedelta(days=100 + n))

    services.recompute_customer_values(now=now)

    assert value(best).segment == "important_value"
    assert value(lapsed_big).segment == "important_winback"
    assert {value(p).segment for p in small} <= {"general_winback", "general_development"}


def test_customers_get_the_highest_ranked_tier_whose_conditions_hold():
    now = timezone.now()
    best = CustomerFactory()
    for k in range(3):
        paid_order(best, "500.00", now - timedelta(days=1 + k))
    others = [CustomerFactory() for _ in range(4)]
    for n, person in enumerate(others):
        paid_order(person, "5.00", now - timedelta(days=100 + n))

    services.recompute_customer_values(now=now)

    assert value(best).tier.slug == "core"
    assert {value(p).tier.slug for p in others} == {"ordinary"}


def test_profiles_without_orders_get_the_tier_configured_for_them_and_no_rfm():
    browser = CustomerFactory()

    services.recompute_customer_values()

    row = value(browser)
    assert row.tier.slug == "potential"
    assert (row.r, row.f, row.m, row.segment, row.frequency) == (None, None, None, "", None)


def test_operator_thresholds_replace_quintiles():
    now = timezone.now()
    person = CustomerFactory()
    paid_order(person, "150.00", now - timedelta(days=45))
    paid_order(person, "150.00", now - timedelta(days=50))
    paid_order(person, "150.00", now - timedelta(days=55))
    scheme(
        method=ScoringMethod.THRESHOLDS,
        r_thresholds=[7, 30, 90, 180],
        f_thresholds=[2, 3, 5, 10],
        m_thresholds=[Decimal("50"), Decimal("200"), Decimal("500"), Decimal("1000")],
    )

    services.recompute_customer_values(now=now)

    row = value(person)
    assert (row.r, row.f, row.m) == (3, 3, 3)


def test_orders_sent_under_an_anonymous_id_count_for_the_profile_holding_that_identity():
    now = timezone.now()
    person = CustomerFactory()
    Identity.objects.create(profile=person, kind="anonymous_id", value="anon-1")
    Event.objects.create(
        name="order_paid",
        kind="business",
        timestamp=now - timedelta(days=1),
        user_id=None,
        anonymous_id="anon-1",
        properties={"order_id": "anon-order", "amount": "40.00"},
    )

    services.recompute_customer_values(now=now)

    assert value(person).monetary == Decimal("40.00")


def test_without_ties_scores_are_pandas_qcut_of_the_ranks():
    import pandas as pd

    now = timezone.now()
    spends = [Decimal(7 * k % 101 + k) for k in range(1, 38)]  # 37 distinct amounts, shuffled
    assert len(set(spends)) == len(spends)
    people = []
    for amount in spends:
        person = CustomerFactory()
        paid_order(person, f"{amount:.2f}", now - timedelta(days=1))
        people.append(person)

    services.recompute_customer_values(now=now)

    expected = pd.qcut(pd.Series([float(a) for a in spends]).rank(method="first"), 5, labels=[1, 2, 3, 4, 5])
    assert [value(p).m for p in people] == [int(x) for x in expected]


def test_amounts_read_alike_whether_or_not_the_database_checked_older_orders(stored_before_amount_check):
    from tracking.selectors import order_amounts_validated

    now = timezone.now()
    gina, hal = CustomerFactory(), CustomerFactory()
    paid_order(gina, "20.00", now - timedelta(days=3))
    paid_order(gina, "7", now - timedelta(days=4))
    paid_order(hal, "12.345", now - timedelta(days=5))
    assert order_amounts_validated()
    services.recompute_customer_values(now=now)
    checked = {p: (value(p).frequency, value(p).monetary) for p in (gina, hal)}

    with stored_before_amount_check():  # older orders whose amounts the database refuses today
        for amount in ("oops", "-5.00", "1_000", " 3"):
            paid_order(hal, amount, now - timedelta(days=6))
    assert not order_amounts_validated()
    services.recompute_customer_values(now=now + timedelta(seconds=1))

    assert checked == {gina: (2, Decimal("27.00")), hal: (1, Decimal("12.35"))}
    # The unreadable amounts still count as orders, of 0 each.
    assert (value(gina).frequency, value(gina).monetary) == (2, Decimal("27.00"))
    assert (value(hal).frequency, value(hal).monetary) == (5, Decimal("12.35"))
