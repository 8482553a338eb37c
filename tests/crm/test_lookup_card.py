"""The customer-service lookup as an agent reads it: a summary line, a labelled value card, tables
of coupons and messages, every time in the agent's time zone, no data structure printed raw."""

import re
import uuid
import zoneinfo
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from config.formatting import MISSING
from coupons import services as coupon_services
from crm import services
from tests.factories.coupons import CouponRuleFactory
from tests.factories.crm import CustomerFactory, paid_order
from tracking.models import Event, EventKind

pytestmark = pytest.mark.django_db

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")


@pytest.fixture
def agent(make_staff) -> Client:
    client = Client()
    client.force_login(make_staff("Customer service"))
    client.cookies["opsloop_tz"] = "Asia/Shanghai"
    return client


@pytest.fixture
def core_customer():
    now = timezone.now()
    person = CustomerFactory(user_id="card-vip")
    for k in range(4):
        paid_order(person, "300.00", now - timedelta(days=3, hours=k))
    for n in range(4):
        paid_order(CustomerFactory(), "3.00", now - timedelta(days=150 + n))
    services.recompute_customer_values(now=now)
    return person


def test_the_summary_line_says_tier_last_order_and_the_unused_coupon_with_its_last_day(agent, core_customer):
    coupon = coupon_services.issue_coupon(rule=CouponRuleFactory(name="Spring 20 off"), profile=core_customer)
    ends = timezone.now().astimezone(SHANGHAI) + timedelta(days=2)
    coupon.expires_at = ends
    coupon.save(update_fields=["expires_at"])

    page = agent.get("/admin/profiles/profile/lookup/", {"q": "card-vip"})

    (card,) = page.context["results"]
    assert card["summary"] == f"Core customer, last order 3 days ago, 1 unused coupon expiring {ends:%A}"
    assert card["summary"] in page.content.decode()


def test_the_card_shows_labels_not_slugs_and_local_times_not_iso_strings(agent, core_customer):
    coupon_services.issue_coupon(rule=CouponRuleFactory(name="Spring 20 off"), profile=core_customer)

    html = agent.get("/admin/profiles/profile/lookup/", {"q": "card-vip"}).content.decode()

    assert "Important value" in html and "important_value" not in html
    assert "¥1,200.00" in html
    assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", html), "an ISO timestamp is printed raw"
    assert "{'" not in html and "&#x27;:" not in html, "a Python dict is printed raw"
    assert " CST" in html  # Asia/Shanghai, the agent's zone, not the server's UTC
    coupons = html.split('data-table="coupons"')[1].split("</table>")[0]
    assert "Spring 20 off" in coupons and "Available" in coupons


def test_a_person_without_orders_or_coupons_reads_as_such(agent):
    CustomerFactory(user_id="card-new")
    services.recompute_customer_values(now=timezone.now())

    (card,) = agent.get("/admin/profiles/profile/lookup/", {"q": "card-new"}).context["results"]

    assert card["summary"].endswith("no orders yet, no unused coupons")


def test_events_and_traits_with_values_no_one_checked_still_draw_the_card(agent):
    """Only orders are validated at ingestion: any other event may carry any amount or moment."""
    at_the_edge = "0001-01-01T00:00:00+05:00"
    person = CustomerFactory(user_id="card-odd", traits={"first_order": at_the_edge, "limit": "Infinity"})
    for amount in ("1e30", "NaN", "Infinity", "-Infinity", "9" * 80, "a lot"):
        Event.objects.create(
            event_id=uuid.uuid4(),
            name="cart_viewed",
            kind=EventKind.BEHAVIOR,
            timestamp=timezone.now() - timedelta(minutes=5),
            user_id=person.user_id,
            properties={"amount": amount, "seen_at": at_the_edge, "ends": "9999-12-31T23:59:00-05:00"},
        )

    page = agent.get("/admin/profiles/profile/lookup/", {"q": "card-odd"})

    assert page.status_code == 200
    html = page.content.decode()
    events = html.split("Latest events")[1].split("</table>")[0]
    assert events.count(f"Amount: {MISSING}") == 6 and events.count(f"Seen at: {at_the_edge}") == 6
    assert f"<dd>{at_the_edge}</dd>" in html and "<dd>Infinity</dd>" in html
