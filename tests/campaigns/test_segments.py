"""Segments: the definition tree compiled to one parametrised query, its size and sample, and
400s that name what is wrong."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from campaigns.segments import DefinitionError, compile_definition
from campaigns.selectors import segment_preview, segment_size
from crm.models import CustomerValue, ValueTier
from profiles.models import Profile
from tests.factories.campaigns import SegmentFactory, add_events, make_profiles

pytestmark = pytest.mark.django_db


def test_segment_combines_tags_traits_tiers_and_event_counts():
    beijing = make_profiles(6, prefix="bj", city="Beijing")
    make_profiles(4, prefix="sh", city="Shanghai")
    gold = ValueTier.objects.create(slug="gold", name="Gold", rank=3)
    for p in beijing[:4]:
        CustomerValue.objects.create(profile=p, tier=gold, lifecycle="active")
    now = timezone.now()
    # bj00000 opened the app 3 times recently, bj00001 only twice, bj00002 three times but long ago
    add_events([("bj00000", "app_open", now - timedelta(days=d)) for d in (1, 2, 3)])
    add_events([("bj00001", "app_open", now - timedelta(days=d)) for d in (1, 2)])
    add_events([("bj00002", "app_open", now - timedelta(days=d)) for d in (40, 41, 42)])
    definition = {
        "all": [
            {"tag": "campaign-test"},
            {"trait": "city", "op": "eq", "value": "Beijing"},
            {"tier": ["gold"]},
            {"any": [{"event": "app_open", "within_days": 30, "op": "gte", "count": 3}, {"lifecycle": ["churned"]}]},
        ]
    }
    assert segment_size(definition) == 1
    assert segment_preview(SegmentFactory(definition=definition))["sample"] == ["bj00000"]
    not_recent = {"all": [{"trait": "city", "value": "Beijing"}, {"event": "app_open", "op": "eq", "count": 0}]}
    assert sorted(segment_preview(SegmentFactory(definition=not_recent))["sample"]) == [
        "bj00002",
        "bj00003",
        "bj00004",
        "bj00005",
    ]
    assert segment_size({"not": {"trait": "city", "op": "in", "value": ["Beijing"]}}) == 4


def test_custom_traits_compare_by_json_type():
    make_profiles(3, prefix="t", traits={"vip_level": 3, "plan": "pro"})
    make_profiles(2, prefix="s", traits={"vip_level": "3", "plan": "basic"})
    assert segment_size({"trait": "vip_level", "op": "gte", "value": 2}) == 3
    assert segment_size({"trait": "vip_level", "op": "eq", "value": 3}) == 3
    assert segment_size({"trait": "plan", "op": "contains", "value": "as"}) == 2
    assert segment_size({"trait": "plan", "op": "ne", "value": "pro"}) == 2


def test_user_values_never_reach_the_sql_text():
    make_profiles(2, prefix="x")
    hostile = "x'; DROP TABLE profiles_profile; --"
    with CaptureQueriesContext(connection) as queries:
        assert segment_size({"trait": "city", "op": "eq", "value": hostile}) == 0
    assert Profile.objects.count() == 2
    compiled = compile_definition({"trait": "city", "op": "eq", "value": hostile})
    assert hostile not in compiled.where
    assert len(queries) == 1


def test_unknown_fields_and_operators_are_named():
    with pytest.raises(DefinitionError) as caught:
        compile_definition({"all": [{"colour": "red"}, {"trait": "city", "op": "like", "value": "x"}]})
    message = " ".join(caught.value.errors)
    assert "'colour'" in message and "all[0]" in message
    assert "'like'" in message and "all[1]" in message


def test_create_segment_answers_size_and_rejects_unknown_operator(api_client):
    make_profiles(5)
    created = api_client.post(
        "/api/v1/segments", {"name": "all", "definition": {"tag": "campaign-test"}}, format="json"
    )
    assert created.status_code == 201
    assert created.json()["size"] == 5
    preview = api_client.get(f"/api/v1/segments/{created.json()['id']}/preview").json()
    assert preview["size"] == 5 and len(preview["sample"]) == 5
    bad = api_client.post(
        "/api/v1/segments",
        {"name": "bad", "definition": {"event": "app_open", "op": "between", "count": 1}},
        format="json",
    )
    assert bad.status_code == 400
    assert "between" in str(bad.json()["definition"])
    assert api_client.get("/api/v1/segments/999999/preview").status_code == 404


def test_events_sent_before_identify_count_for_the_profile_through_its_anonymous_id():
    from profiles.models import Identity

    (person,) = make_profiles(1, prefix="anon")
    Identity.objects.create(profile=person, kind="anonymous_id", value="device-cookie-1")
    now = timezone.now()
    from tracking.models import Event

    Event.objects.bulk_create(
        [Event(name="app_open", timestamp=now - timedelta(days=1), anonymous_id="device-cookie-1") for _ in range(2)]
    )
    add_events([("anon00000", "app_open", now - timedelta(days=2))])
    assert segment_size({"event": "app_open", "within_days": 7, "op": "eq", "count": 3}) == 1
