"""The event admin: a read-only log operators filter, search and chart."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from tests.factories.tracking import EventFactory
from tracking import selectors
from tracking.admin import EstimatedCountPaginator
from tracking.models import Event

pytestmark = pytest.mark.django_db
URL = "/admin/tracking/event/"


@pytest.fixture
def operator(client, make_staff):
    client.force_login(make_staff("Operations"))
    return client


def test_operations_staff_see_events_but_cannot_add_change_or_delete(operator):
    event = EventFactory(user_id="u-visible")
    assert b"u-visible" in operator.get(URL).content
    assert operator.get(f"{URL}add/").status_code == 403
    assert operator.post(f"{URL}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    detail = operator.get(f"{URL}{event.pk}/change/")
    assert detail.status_code == 200
    assert b'name="_save"' not in detail.content


def test_search_finds_events_by_exact_user_anonymous_or_event_id(operator):
    by_user = EventFactory(user_id="u-search-1")
    by_anonymous = EventFactory(user_id=None, anonymous_id="anon-search-1")
    other = EventFactory(user_id="u-search-10")
    for term, expected in [("u-search-1", by_user), ("anon-search-1", by_anonymous), (str(other.event_id), other)]:
        listed = list(operator.get(URL, {"q": term}).context["cl"].result_list)
        assert listed == [expected]


def test_name_and_source_filters_offer_the_values_present_and_filter_by_them(operator):
    EventFactory(name="signup", utm_source="newsletter")
    EventFactory(name="app_open", utm_source="")
    page_view = EventFactory(name="page_view", utm_source="ads")
    assert selectors.event_names() == ["app_open", "page_view", "signup"]
    assert selectors.utm_sources() == ["ads", "newsletter"]
    listed = list(operator.get(URL, {"name": "page_view"}).context["cl"].result_list)
    assert listed == [page_view]
    assert list(operator.get(URL, {"utm_source": "ads", "kind": "behavior"}).context["cl"].result_list) == [page_view]


def test_the_chart_counts_the_listed_events_per_day_and_kind(operator):
    now = timezone.now()
    EventFactory.create_batch(2, name="signup", timestamp=now - timedelta(days=1))
    EventFactory(name="signup", kind="business", timestamp=now)
    EventFactory(name="app_open", timestamp=now)
    EventFactory(name="signup", timestamp=now - timedelta(days=40))  # outside the 30 days
    response = operator.get(URL, {"name": "signup"})
    volume = response.context["daily_volume"]
    assert len(volume["days"]) == 30
    assert volume["days"][-1] == now.date().isoformat()
    assert volume["series"]["behavior"][-2:] == [2, 0]
    assert volume["series"]["business"][-1] == 1
    assert sum(sum(counts) for counts in volume["series"].values()) == 3
    assert b"opsloop/vendor/chart.umd.min.js" in response.content


def test_an_unfiltered_list_of_a_big_table_is_counted_from_the_planner_estimate():
    class EstimatingAlways(EstimatedCountPaginator):
        estimate_above = 0

    EventFactory.create_batch(5, name="app_open")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tracking_event")
    EventFactory.create_batch(2, name="signup")  # not yet in the statistics
    assert EstimatingAlways(Event.objects.order_by("-id"), 100).count == 5
    assert EstimatingAlways(Event.objects.filter(name="signup").order_by("-id"), 100).count == 2
    assert EstimatedCountPaginator(Event.objects.order_by("-id"), 100).count == 7
