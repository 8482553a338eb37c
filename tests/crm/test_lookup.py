"""What customer service and the profile API read: the value section and `value_of`."""

from datetime import timedelta

import pytest
from django.utils import timezone

from crm import selectors, services
from profiles import lookup
from tests.factories.crm import AccountManagerFactory, CustomerFactory, paid_order

pytestmark = pytest.mark.django_db


def top_customer(now):
    person = CustomerFactory()
    for k in range(4):
        paid_order(person, "300.00", now - timedelta(days=1 + k))
    for n in range(4):
        paid_order(CustomerFactory(), "3.00", now - timedelta(days=150 + n))
    return person


def test_the_lookup_shows_a_vip_callers_account_manager():
    now = timezone.now()
    manager = AccountManagerFactory(user__first_name="Wei", user__last_name="Zhang", phone="+8613800000000")
    vip = top_customer(now)
    services.recompute_customer_values(now=now)

    section = lookup.sections_for(vip)["value"]

    assert section["tier"] == {"slug": "core", "name": "Core"}
    assert section["segment"] == "important_value"
    assert section["lifecycle"] == "active"
    assert section["rfm"]["monetary"] == "1200.00"
    assert section["account_manager"] == {
        "username": manager.user.username,
        "name": "Wei Zhang",
        "email": manager.user.email,
        "phone": "+8613800000000",
    }


def test_the_lookup_section_is_empty_before_the_first_recompute():
    assert lookup.sections_for(CustomerFactory())["value"] is None


def test_value_of_gives_the_profile_api_tier_rfm_and_lifecycle():
    now = timezone.now()
    vip = top_customer(now)
    browser = CustomerFactory()
    services.recompute_customer_values(now=now)

    assert selectors.value_of(vip) == {
        "tier": "core",
        "rfm": {
            "recency_days": 1,
            "frequency": 4,
            "monetary": "1200.00",
            "r": 5,
            "f": 5,
            "m": 5,
            "segment": "important_value",
        },
        "lifecycle": "active",
    }
    assert selectors.value_of(browser) == {"tier": "potential", "rfm": None, "lifecycle": "active"}


def test_distribution_shows_the_share_of_revenue_of_the_top_fifth():
    now = timezone.now()
    amounts = ["1000.00"] + ["10.00"] * 4  # five customers: the top one is the top 20%
    for amount in amounts:
        paid_order(CustomerFactory(), amount, now - timedelta(days=1))
    CustomerFactory()  # no orders
    services.recompute_customer_values(now=now)

    result = selectors.distribution()

    assert (result["profiles"], result["customers"]) == (6, 5)
    assert result["top20_share"] == pytest.approx(1000 / 1040)
    tiers = {row["key"]: row for row in result["tiers"]}
    assert tiers["potential"]["count"] == 1 and tiers["potential"]["revenue_share"] == 0
    assert sum(row["revenue_share"] for row in result["tiers"]) == pytest.approx(1)
    assert result["lorenz"][-1]["share"] == pytest.approx(1)


def test_the_profile_api_fields_come_from_one_query(django_assert_num_queries):
    now = timezone.now()
    vip = top_customer(now)
    services.recompute_customer_values(now=now)
    fresh = type(vip).objects.get(pk=vip.pk)

    # One query for crm's tier, rfm and lifecycle together, one for the predictions app's field.
    with django_assert_num_queries(2):
        fields = lookup.profile_fields_for(fresh)

    assert fields["tier"] == "core" and fields["lifecycle"] == "active" and fields["rfm"]["frequency"] == 4
