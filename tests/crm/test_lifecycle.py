"""Lifecycle stages from registration and activity, with the thresholds of the active scheme."""

from datetime import timedelta

import pytest
from django.utils import timezone

from crm import services
from crm.models import CustomerValue, ScoringScheme
from tests.factories.crm import CustomerFactory, paid_order

pytestmark = pytest.mark.django_db


def stage(profile) -> str:
    return CustomerValue.objects.get(profile=profile).lifecycle


def days_ago(n: float):
    return timezone.now() - timedelta(days=n)


def test_a_customer_registered_within_90_days_and_active_is_new():
    person = CustomerFactory(signup_at=days_ago(89), last_seen_at=days_ago(1))
    services.recompute_customer_values()
    assert stage(person) == "new"


def test_a_customer_registered_long_ago_and_active_is_active():
    person = CustomerFactory(signup_at=days_ago(91), last_seen_at=days_ago(1))
    services.recompute_customer_values()
    assert stage(person) == "active"


def test_no_activity_for_30_days_is_silent_and_for_90_days_churned():
    silent = CustomerFactory(last_seen_at=days_ago(31))
    churned = CustomerFactory(last_seen_at=days_ago(91))
    services.recompute_customer_values()
    assert (stage(silent), stage(churned)) == ("silent", "churned")


def test_a_recent_order_counts_as_activity():
    person = CustomerFactory(last_seen_at=days_ago(100))
    paid_order(person, "10.00", days_ago(2))
    services.recompute_customer_values()
    assert stage(person) == "active"


def test_thresholds_are_the_operators_settings():
    person = CustomerFactory(signup_at=days_ago(100), last_seen_at=days_ago(10))
    ScoringScheme.objects.filter(is_active=True).update(new_days=120, silent_days=7, churned_days=60)
    services.recompute_customer_values()
    assert stage(person) == "silent"


def test_a_silent_customer_who_comes_back_is_reactivated():
    person = CustomerFactory(last_seen_at=days_ago(45))
    services.recompute_customer_values()
    assert stage(person) == "silent"

    person.last_seen_at = days_ago(0.1)
    person.save()
    services.recompute_customer_values()
    assert stage(person) == "reactivated"


def test_reactivated_turns_active_after_the_reactivated_period():
    person = CustomerFactory(last_seen_at=days_ago(100))
    services.recompute_customer_values()
    person.last_seen_at = days_ago(0.1)
    person.save()
    services.recompute_customer_values()
    assert stage(person) == "reactivated"

    services.recompute_customer_values(now=timezone.now() + timedelta(days=20))
    assert stage(person) == "reactivated"
    person.last_seen_at = timezone.now() + timedelta(days=30)
    person.save()
    services.recompute_customer_values(now=timezone.now() + timedelta(days=31))
    assert stage(person) == "active"
