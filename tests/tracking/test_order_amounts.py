"""The form of an order's amount, held by the database for every writer: the sums over millions of
orders cast each amount as it is, which one malformed amount would fail."""

from __future__ import annotations

import uuid

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from tracking.models import Event
from tracking.selectors import order_amount_sql, order_amounts_validated

pytestmark = pytest.mark.django_db


def store(name: str, properties: dict) -> Event:
    return Event.objects.create(
        event_id=uuid.uuid4(), name=name, timestamp=timezone.now(), user_id="u1", properties=properties
    )


@pytest.mark.parametrize("amount", ["oops", "-5.00", "1_000", "١٢", " 3", "1e3", "5.", ".5", "NaN", "1" * 16])
@pytest.mark.parametrize("name", ["order_paid", "order_refunded"])
def test_the_database_refuses_an_order_amount_that_is_not_a_decimal_string(name, amount):
    with pytest.raises(IntegrityError, match="event_order_amount_decimal"), transaction.atomic():
        store(name, {"order_id": "o1", "amount": amount})
    assert not Event.objects.exists()


def test_other_amounts_and_order_events_without_one_are_stored():
    store("order_paid", {"order_id": "o1", "amount": "20.00"})
    store("order_paid", {"order_id": "o2", "amount": "12.345"})
    store("order_paid", {"order_id": "o3", "amount": 7})  # a JSON number reads as "7"
    store("order_refunded", {"order_id": "o1"})
    store("order_refunded", {"order_id": "o2", "amount": None})
    store("cart_add", {"amount": "a few"})  # only order events' amounts are sums' inputs
    assert Event.objects.count() == 6


def test_amounts_are_cast_as_they_are_only_where_every_stored_one_was_checked(stored_before_amount_check):
    assert order_amounts_validated()
    assert "~" not in order_amount_sql("e.properties")
    with stored_before_amount_check():
        store("order_paid", {"order_id": "o1", "amount": "oops"})
    assert not order_amounts_validated()
    assert "~" in order_amount_sql("e.properties")
    # The constraint still holds for what is stored from now on.
    with pytest.raises(IntegrityError), transaction.atomic():
        store("order_paid", {"order_id": "o2", "amount": "oops"})
