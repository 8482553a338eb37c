"""The history of tier, stage and segment changes, and the tier movements rebuilt from it."""

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from crm import selectors, services
from crm.models import CustomerValue, ValueChange
from tests.factories.crm import CustomerFactory, paid_order, refund

pytestmark = pytest.mark.django_db


def make_core_and_ordinary(now):
    big = CustomerFactory()
    for k in range(3):
        paid_order(big, "500.00", now - timedelta(days=1 + k), order_id=f"big-{k}")
    # What is left once the big orders are refunded: one small, old order.
    paid_order(big, "1.00", now - timedelta(days=200), order_id="big-small")
    small = [CustomerFactory() for _ in range(4)]
    for n, person in enumerate(small):
        paid_order(person, "5.00", now - timedelta(days=100 + n))
    return big, small


def test_the_first_computation_records_each_profiles_tier_from_nothing():
    now = timezone.now()
    big, small = make_core_and_ordinary(now)
    services.recompute_customer_values(now=now)

    first = ValueChange.objects.get(profile=big, what="tier")
    assert (first.from_value, first.to_value) == ("", "core")
    assert ValueChange.objects.filter(what="tier", to_value="ordinary").count() == len(small)


def test_an_unchanged_recompute_records_nothing_new():
    now = timezone.now()
    make_core_and_ordinary(now)
    services.recompute_customer_values(now=now)
    before = ValueChange.objects.count()

    services.recompute_customer_values(now=now)

    assert ValueChange.objects.count() == before


def test_a_move_from_core_to_ordinary_is_recorded_and_counted():
    now = timezone.now()
    big, _ = make_core_and_ordinary(now)
    services.recompute_customer_values(now=now - timedelta(days=1) + timedelta(hours=1))
    for k in range(3):
        refund(big, f"big-{k}", now - timedelta(hours=2))

    later = now + timedelta(minutes=1)
    services.recompute_customer_values(now=later)

    move = ValueChange.objects.filter(profile=big, what="tier").latest("at")
    assert (move.from_value, move.to_value) == ("core", "ordinary")
    assert CustomerValue.objects.get(profile=big).tier.slug == "ordinary"
    count = selectors.moved_between_tiers(
        from_tier="core", to_tier="ordinary", since=now - timedelta(days=30), until=now + timedelta(days=1)
    )
    assert count == 1


def test_the_movement_matrix_compares_tiers_at_two_dates():
    now = timezone.now()
    big, small = make_core_and_ordinary(now)
    first = now - timedelta(hours=20)
    services.recompute_customer_values(now=first)
    for k in range(3):
        refund(big, f"big-{k}", now - timedelta(hours=2))
    services.recompute_customer_values(now=now)

    result = selectors.tier_movements(start=first + timedelta(minutes=1), end=now + timedelta(minutes=1))

    keys = [t["key"] for t in result["tiers"]]
    cell = lambda a, b: result["matrix"][keys.index(a)][keys.index(b)]  # noqa: E731
    assert cell("core", "ordinary") == 1
    assert cell("core", "core") == 0
    # Everyone small was ordinary at the start, wherever relative scoring took them since.
    assert sum(result["matrix"][keys.index("ordinary")]) == len(small)
    # The end column totals are today's tiers.
    now_counts = Counter(CustomerValue.objects.values_list("tier__slug", flat=True))
    assert {k: sum(row[keys.index(k)] for row in result["matrix"]) for k in now_counts} == dict(now_counts)


def test_lifecycle_changes_are_recorded_with_from_and_to():
    person = CustomerFactory(last_seen_at=timezone.now() - timedelta(days=40))
    services.recompute_customer_values()
    person.last_seen_at = timezone.now()
    person.save()
    services.recompute_customer_values()

    moves = list(ValueChange.objects.filter(profile=person, what="lifecycle").order_by("id"))
    assert [(m.from_value, m.to_value) for m in moves] == [("", "silent"), ("silent", "reactivated")]


def test_a_merged_profile_loses_its_value_row():
    now = timezone.now()
    survivor = CustomerFactory()
    merged = CustomerFactory()
    services.recompute_customer_values(now=now)
    merged.merged_into = survivor
    merged.save()

    services.recompute_customer_values(now=now)

    assert not CustomerValue.objects.filter(profile=merged).exists()
    assert CustomerValue.objects.filter(profile=survivor).exists()
