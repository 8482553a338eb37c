"""Operators racing each other: the manager's capacity holds under concurrent reassignments."""

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from crm import services
from crm.errors import CapacityExceeded
from crm.models import CustomerValue, ValueTier
from tests.factories.crm import AccountManagerFactory, CustomerFactory


@pytest.mark.django_db(transaction=True)
def test_two_reassignments_racing_for_the_last_slot_give_it_to_one():
    core = ValueTier.objects.get(slug="core")
    manager = AccountManagerFactory(capacity=1)
    people = [CustomerFactory() for _ in range(2)]
    for person in people:
        CustomerValue.objects.create(profile=person, tier=core, computed_at=timezone.now() - timedelta(days=1))
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def reassign(person):
        barrier.wait(5)
        try:
            services.reassign_account_manager(profile_ids=[person.pk], manager=manager)
            outcomes.append("moved")
        except CapacityExceeded:
            outcomes.append("refused")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=reassign, args=(p,)) for p in people]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)

    assert sorted(outcomes) == ["moved", "refused"]
    assert CustomerValue.objects.filter(account_manager=manager).count() == 1


@pytest.mark.django_db
def test_a_threshold_scheme_without_four_ascending_boundaries_fails_the_run_with_the_field():
    from django.core.exceptions import ValidationError

    from crm.models import ScoringScheme

    ScoringScheme.objects.filter(is_active=True).update(
        method="thresholds", r_thresholds=[30, 7, 90, 180], f_thresholds=[1, 2, 3, 4], m_thresholds=[1, 2, 3, 4]
    )
    with pytest.raises(ValidationError) as refused:
        services.recompute_customer_values()
    assert "r_thresholds" in refused.value.message_dict
