"""Account managers: new top-tier customers are given one, balanced by load, within capacity."""

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from access.models import AuditEntry
from crm import services
from crm.errors import CapacityExceeded, ManagerInactive
from crm.models import CustomerValue, ValueChange, ValueTier
from tests.factories.crm import AccountManagerFactory, CustomerFactory, paid_order

pytestmark = pytest.mark.django_db


def top_customers(count: int, now, others: int = 6):
    """`count` customers in "core" (above the base on every score) and some ordinary ones."""
    tops = [CustomerFactory() for _ in range(count)]
    for person in tops:
        for k in range(4):
            paid_order(person, "400.00", now - timedelta(days=1 + k))
    for n in range(others):
        paid_order(CustomerFactory(), "5.00", now - timedelta(days=200 + n))
    return tops


def test_new_core_customers_are_spread_over_managers_by_load():
    now = timezone.now()
    busy = AccountManagerFactory(capacity=10)
    idle = AccountManagerFactory(capacity=10)
    already, *tops = top_customers(4, now)
    CustomerValue.objects.create(profile=already, account_manager=busy, tier=ValueTier.objects.get(slug="core"))

    run = services.recompute_customer_values(now=now)

    managers = Counter(CustomerValue.objects.filter(profile__in=tops).values_list("account_manager", flat=True))
    # The idle manager takes two, the busy one (already holding one customer) one: 2 and 2.
    assert managers == Counter({idle.pk: 2, busy.pk: 1})
    assert CustomerValue.objects.get(profile=already).account_manager == busy
    assert run.managers_assigned == 3


def test_no_manager_goes_over_capacity_and_the_rest_wait():
    now = timezone.now()
    manager = AccountManagerFactory(capacity=2)
    top_customers(3, now)

    run = services.recompute_customer_values(now=now)

    assert CustomerValue.objects.filter(account_manager=manager).count() == 2
    assert run.unassigned_for_capacity == 1


def test_inactive_managers_get_no_new_customers():
    now = timezone.now()
    AccountManagerFactory(is_active=False)
    top_customers(1, now)
    services.recompute_customer_values(now=now)
    assert not CustomerValue.objects.filter(account_manager__isnull=False).exists()


def test_assignment_is_recorded_in_the_history():
    now = timezone.now()
    manager = AccountManagerFactory()
    [top] = top_customers(1, now)
    services.recompute_customer_values(now=now)
    change = ValueChange.objects.get(profile=top, what="account_manager")
    assert (change.from_value, change.to_value) == ("", manager.user.username)


def test_reassignment_moves_customers_and_writes_an_audit_row(admin_user):
    now = timezone.now()
    first = AccountManagerFactory()
    second = AccountManagerFactory()
    tops = top_customers(2, now)
    services.recompute_customer_values(now=now)
    with_first = list(CustomerValue.objects.filter(account_manager=first).values_list("profile_id", flat=True))
    assert len(with_first) == 1  # balanced: one each

    moved = services.reassign_account_manager(profile_ids=[p.pk for p in tops], manager=second, actor=admin_user)

    assert moved == 1
    assert CustomerValue.objects.filter(account_manager=second).count() == 2
    assert not CustomerValue.objects.filter(account_manager=first).exists()
    audit = AuditEntry.objects.get(action="crm.account_manager_reassigned")
    assert audit.actor == admin_user and audit.details["profiles"] == with_first


def test_reassignment_beyond_capacity_is_refused_and_changes_nothing():
    now = timezone.now()
    AccountManagerFactory(capacity=5)
    small = AccountManagerFactory(capacity=1)
    tops = top_customers(2, now)
    services.recompute_customer_values(now=now)
    before = dict(CustomerValue.objects.values_list("profile_id", "account_manager_id"))

    with pytest.raises(CapacityExceeded):
        services.reassign_account_manager(profile_ids=[p.pk for p in tops], manager=small)

    assert dict(CustomerValue.objects.values_list("profile_id", "account_manager_id")) == before


def test_reassignment_to_an_inactive_manager_is_refused():
    now = timezone.now()
    gone = AccountManagerFactory(is_active=False)
    [top] = top_customers(1, now)
    services.recompute_customer_values(now=now)
    with pytest.raises(ManagerInactive):
        services.reassign_account_manager(profile_ids=[top.pk], manager=gone)


def test_a_customer_leaving_the_top_tier_frees_the_managers_slot():
    now = timezone.now()
    manager = AccountManagerFactory()
    [top] = top_customers(1, now)
    services.recompute_customer_values(now=now)
    assert CustomerValue.objects.get(profile=top).account_manager == manager

    services.recompute_customer_values(now=now + timedelta(days=400))  # every order out of the window

    assert CustomerValue.objects.get(profile=top).account_manager is None
    change = ValueChange.objects.filter(profile=top, what="account_manager").latest("id")
    assert (change.from_value, change.to_value) == (manager.user.username, "")
