"""Customer-service lookup and the product's profile endpoint: matching, masking per role,
the lookup record, bad queries, and the registries through which higher apps add their parts."""

from __future__ import annotations

import pytest
from django.db import connection

from profiles import lookup, selectors, services
from profiles.models import IdentityKind, LookupRecord
from tests.factories.profiles import IdentityFactory, ProfileFactory, ProfileTagFactory, TagFactory, ingest

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def only_test_sections(monkeypatch):
    """The registries hold only what each test registers, so other apps' parts stay out."""
    monkeypatch.setattr(lookup, "_sections", {})
    monkeypatch.setattr(lookup, "_fields", {})


@pytest.fixture
def caller():
    profile = ProfileFactory(
        user_id="caller-1", name="Zhang Wei", phone="+8613812345678", email="zhang.wei@example.com"
    )
    IdentityFactory(profile=profile, kind=IdentityKind.PHONE, value="+8613812345678")
    IdentityFactory(profile=profile, kind=IdentityKind.OPENID, value="oAbCdEf123")
    ProfileTagFactory(profile=profile, tag=TagFactory(name="vip-fan", category="interest"), score=0.8)
    ProfileFactory(user_id="bystander", phone="+8613900000000", email="other@example.com")
    return profile


def lookup_as(staff_client, role, q):
    return staff_client(role).get("/api/v1/support/lookup", {"q": q})


@pytest.mark.parametrize(
    "q", ["caller-1", "138 1234 5678", "+86-138-1234-5678", "13812345678", "Zhang.Wei@Example.com", "oAbCdEf123"]
)
def test_lookup_finds_the_caller_by_user_id_phone_in_any_format_email_or_identity(staff_client, caller, q):
    response = lookup_as(staff_client, "Customer service", q)
    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert [r["user_id"] for r in results] == ["caller-1"]
    assert results[0]["tags"] == [{"name": "vip-fan", "category": "interest", "score": 0.8}]


def test_customer_service_sees_phone_and_email_masked(staff_client, caller):
    result = lookup_as(staff_client, "Customer service", "caller-1").json()["results"][0]
    assert (result["phone"], result["email"]) == ("138****5678", "z***@example.com")
    assert result["traits"]["phone"] == "138****5678"
    assert {"kind": "phone", "value": "138****5678"} in result["identities"]
    assert "12345678" not in str(result)


def test_a_lead_with_the_personal_data_right_sees_them_in_full(staff_client, caller):
    result = lookup_as(staff_client, "Customer service lead", "caller-1").json()["results"][0]
    assert (result["phone"], result["email"]) == ("+8613812345678", "zhang.wei@example.com")


def test_every_lookup_is_recorded_with_staff_query_and_profiles_shown(make_staff, caller):
    from rest_framework.test import APIClient

    agent = make_staff("Customer service", username="agent-7")
    client = APIClient()
    client.force_login(agent)
    client.get("/api/v1/support/lookup", {"q": "13812345678"})
    client.get("/api/v1/support/lookup", {"q": "nobody-here"})
    client.get("/api/v1/support/lookup", {"q": "x"})
    found, empty, refused = LookupRecord.objects.order_by("id")
    assert (found.staff, found.query, found.user_ids, found.profile_ids) == (
        agent,
        "13812345678",
        ["caller-1"],
        [caller.id],
    )
    assert found.saw_personal_data is False
    assert (empty.user_ids, empty.refused) == ([], "")
    assert refused.refused and refused.query == "x"


@pytest.mark.parametrize("q", ["", "   ", "x", "a" * 101, "' OR 1=1 --", "13%", "*", "abc;drop"])
def test_bad_queries_get_a_clear_400_on_q(staff_client, caller, q):
    response = lookup_as(staff_client, "Customer service", q)
    assert response.status_code == 400
    assert "q" in response.json()


def test_missing_query_is_a_400(staff_client):
    response = staff_client("Customer service").get("/api/v1/support/lookup")
    assert response.status_code == 400 and "q" in response.json()


def test_a_query_matching_nothing_reveals_nothing(staff_client, caller):
    response = lookup_as(staff_client, "Customer service", "1381234")
    assert response.json() == {"results": []}


def test_lookup_is_refused_to_api_keys_and_staff_without_the_permission(make_api_client, staff_client, caller):
    assert (
        make_api_client("profiles:read", "manage").get("/api/v1/support/lookup", {"q": "caller-1"}).status_code == 403
    )
    assert staff_client("Analyst").get("/api/v1/support/lookup", {"q": "caller-1"}).status_code == 403
    assert LookupRecord.objects.count() == 0


def test_lookup_of_a_merged_user_id_shows_the_surviving_profile(staff_client, caller):
    services.identify(user_id="second-account", identities=[("openid", "oAbCdEf123")])
    results = lookup_as(staff_client, "Customer service", "caller-1").json()["results"]
    assert [r["user_id"] for r in results] == ["second-account"]


def test_lookup_shows_sections_other_apps_register_and_the_latest_events(staff_client, caller):
    lookup.register_section("coupons", lambda profile: [{"code": f"C-{profile.user_id}"}])
    lookup.register_profile_field("tier", lambda profile: "gold")
    lookup.register_profile_field("lifecycle", lambda profile: "active")
    ingest([{"user_id": "caller-1", "name": "order_paid"}])
    result = lookup_as(staff_client, "Customer service", "caller-1").json()["results"][0]
    assert result["sections"] == {"coupons": [{"code": "C-caller-1"}]}
    assert (result["tier"], result["lifecycle"]) == ("gold", "active")
    assert [e["name"] for e in result["latest_events"]] == ["order_paid"]


def test_short_queries_use_indexes_and_never_scan_profiles(caller):
    """With sequential scans priced out, the plan of every lookup statement must use indexes."""
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        selectors.find_profiles("13812345678")
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        for query in captured.captured_queries:
            cursor.execute("EXPLAIN " + query["sql"])
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "Seq Scan" not in plan, plan


def test_profile_endpoint_returns_the_contract_fields(make_api_client, caller):
    lookup.register_profile_field(
        "rfm",
        lambda p: {
            "recency_days": 3,
            "frequency": 2,
            "monetary": "20.00",
            "r": 5,
            "f": 3,
            "m": 2,
            "segment": "general_value",
        },
    )
    response = make_api_client("profiles:read").get("/api/v1/profiles/caller-1")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "user_id",
        "traits",
        "tags",
        "tier",
        "rfm",
        "lifecycle",
        "predictions",
        "first_seen_at",
        "last_seen_at",
    }
    assert body["traits"]["name"] == "Zhang Wei"
    assert body["tags"] == [{"name": "vip-fan", "category": "interest", "score": 0.8}]
    assert (body["tier"], body["lifecycle"]) == (None, None)
    assert body["rfm"]["segment"] == "general_value"


def test_profile_endpoint_answers_404_for_an_unknown_user(make_api_client):
    response = make_api_client("profiles:read").get("/api/v1/profiles/nobody")
    assert response.status_code == 404
    assert response.json()["reason"] == "PROFILE_NOT_FOUND"


def test_profile_endpoint_masks_personal_data_for_staff_sessions_without_the_right(staff_client, caller):
    traits = staff_client("Analyst").get("/api/v1/profiles/caller-1").json()["traits"]
    assert (traits["phone"], traits["email"]) == ("138****5678", "z***@example.com")


def test_profile_endpoint_shows_personal_data_to_the_products_api_key(make_api_client, caller):
    traits = make_api_client("profiles:read").get("/api/v1/profiles/caller-1").json()["traits"]
    assert traits["phone"] == "+8613812345678"


def test_profile_endpoint_query_count_does_not_grow_with_tags(make_api_client, caller):
    from django.test.utils import CaptureQueriesContext

    client = make_api_client("profiles:read")
    client.get("/api/v1/profiles/caller-1")  # the key's first use records its time: not measured
    with CaptureQueriesContext(connection) as one_tag:
        client.get("/api/v1/profiles/caller-1")
    for i in range(5):
        ProfileTagFactory(profile=caller, tag=TagFactory(name=f"extra-{i}"))
    with CaptureQueriesContext(connection) as six_tags:
        assert len(client.get("/api/v1/profiles/caller-1").json()["tags"]) == 6
    assert len(six_tags) == len(one_tag)
