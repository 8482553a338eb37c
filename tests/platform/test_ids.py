"""Ids and integer parameters from bodies, paths and query strings: anything outside PostgreSQL's
bigint or naming no row is a 400 naming the field (bodies, query strings) or a JSON 404 (paths),
never a 500."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework import serializers

from campaigns.models import Segment
from config.api import MAX_ID, IdField
from coupons.models import IssuanceJob
from tests.factories.campaigns import CampaignFactory, SegmentFactory
from tests.factories.coupons import CouponRuleFactory

pytestmark = pytest.mark.django_db

RANGE = "An id is a whole number from 1 to 9223372036854775807."


class _SegmentRef(serializers.Serializer):
    segment = IdField(exists=Segment.objects.all(), what="segment")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, RANGE),
        (-1, RANGE),
        (MAX_ID + 1, RANGE),
        (2**70, RANGE),
        ("12abc", "A valid integer is required."),
        (True, "A valid integer is required."),
        (1.5, "A valid integer is required."),
        (None, "This field may not be null."),
    ],
)
def test_an_id_field_refuses_what_is_not_a_bigint_id_naming_the_field(value, message):
    data = _SegmentRef(data={"segment": value})
    assert not data.is_valid()
    assert data.errors == {"segment": [message]}


def test_an_id_field_refuses_an_id_that_names_no_row():
    data = _SegmentRef(data={"segment": MAX_ID})
    assert not data.is_valid() and data.errors == {"segment": [f"No segment {MAX_ID}."]}


def test_an_id_field_takes_the_id_of_a_row_as_text_or_number():
    segment = SegmentFactory()
    for value in (segment.pk, str(segment.pk)):
        data = _SegmentRef(data={"segment": value})
        assert data.is_valid(), data.errors
        assert data.validated_data == {"segment": segment.pk}


# --- bodies ------------------------------------------------------------------------------------


def test_an_issuance_job_for_a_segment_id_past_bigint_is_a_400_naming_segment(api_client):
    rule = CouponRuleFactory()
    response = api_client.post(
        f"/api/v1/coupon-rules/{rule.pk}/issuance-jobs", {"segment": 1180591620717411303424}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {"segment": [RANGE]}
    assert not IssuanceJob.objects.exists()


def test_an_issuance_job_for_an_unknown_segment_is_refused_at_once(api_client):
    rule = CouponRuleFactory()
    missing = SegmentFactory().pk + 1000
    response = api_client.post(f"/api/v1/coupon-rules/{rule.pk}/issuance-jobs", {"segment": missing}, format="json")
    assert response.status_code == 400
    assert response.json() == {"segment": [f"No segment {missing}."]}
    assert not IssuanceJob.objects.exists()


def test_an_issuance_job_for_a_segment_that_exists_is_accepted(api_client):
    rule = CouponRuleFactory()
    segment = SegmentFactory()
    response = api_client.post(f"/api/v1/coupon-rules/{rule.pk}/issuance-jobs", {"segment": segment.pk}, format="json")
    assert response.status_code == 202, response.json()
    assert IssuanceJob.objects.get().segment_id == segment.pk


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    segment=st.one_of(
        st.integers(), st.text(max_size=30), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none()
    )
)
def test_any_segment_value_gets_an_answer_that_is_not_a_server_error(api_client, segment):
    rule = CouponRuleFactory()
    response = api_client.post(f"/api/v1/coupon-rules/{rule.pk}/issuance-jobs", {"segment": segment}, format="json")
    assert response.status_code == 400
    assert "segment" in response.json()


def test_a_receipt_for_a_delivery_id_past_bigint_is_refused_naming_it(api_client):
    response = api_client.post(
        "/api/v1/deliveries/receipts",
        {"receipts": [{"delivery_id": 2**64, "status": "delivered", "at": "2026-01-01T00:00:00Z"}]},
        format="json",
    )
    assert response.status_code == 200
    assert response.json() == {"accepted": 0, "rejected": [{"index": 0, "errors": {"delivery_id": [RANGE]}}]}


# --- paths -------------------------------------------------------------------------------------

PATHS = [
    ("/api/v1/campaigns/{}", "CAMPAIGN_NOT_FOUND"),
    ("/api/v1/campaigns/{}/results", "CAMPAIGN_NOT_FOUND"),
    ("/api/v1/segments/{}", "SEGMENT_NOT_FOUND"),
    ("/api/v1/coupon-rules/{}", "RULE_NOT_FOUND"),
    ("/api/v1/coupon-rules/{}/report", "RULE_NOT_FOUND"),
    ("/api/v1/coupon-issuance-jobs/{}", "JOB_NOT_FOUND"),
    ("/api/v1/coupon-code-batches/{}", "BATCH_NOT_FOUND"),
    ("/api/v1/goals/{}", "GOAL_NOT_FOUND"),
    ("/api/v1/funnels/{}/analyze", "UNKNOWN_FUNNEL"),
]


@pytest.mark.parametrize(("template", "reason"), PATHS)
@pytest.mark.parametrize("bad", [str(MAX_ID + 1), "1180591620717411303424", "0", "-3", "²", "١٢", "1e3", "abc"])
def test_a_path_id_that_is_no_bigint_id_is_a_json_404(api_client, template, reason, bad):
    response = api_client.get(template.format(bad))
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["reason"] == reason


@pytest.mark.parametrize(("template", "reason"), PATHS[:2])
def test_the_largest_bigint_path_id_is_looked_up_and_not_found(api_client, template, reason):
    response = api_client.get(template.format(MAX_ID))
    assert response.status_code == 404 and response.json()["reason"] == reason


def test_a_post_to_a_path_id_past_bigint_is_a_json_404(api_client):
    response = api_client.post("/api/v1/coupon-rules/99999999999999999999/claim", {"user_id": "u1"}, format="json")
    assert response.status_code == 404 and response.json()["reason"] == "RULE_NOT_FOUND"
    response = api_client.post("/api/v1/campaigns/99999999999999999999/launch")
    assert response.status_code == 404 and response.json()["reason"] == "CAMPAIGN_NOT_FOUND"


def test_a_path_id_of_a_row_still_finds_it(api_client):
    campaign = CampaignFactory()
    assert api_client.get(f"/api/v1/campaigns/{campaign.pk}").json()["id"] == campaign.pk


# --- query parameters --------------------------------------------------------------------------

LISTS = ["/api/v1/funnels", "/api/v1/segments", "/api/v1/campaigns", "/api/v1/coupon-rules", "/api/v1/goals"]


@pytest.mark.parametrize("url", LISTS)
@pytest.mark.parametrize("page", ["abc", "0", "-1", "1.5", "99999999999999999999999"])
def test_a_page_that_is_not_a_page_number_is_a_400_naming_page(api_client, url, page):
    response = api_client.get(url, {"page": page})
    assert response.status_code == 400
    assert list(response.json()) == ["page"]


@pytest.mark.parametrize("url", LISTS)
@pytest.mark.parametrize("page_size", ["abc", "0", "-5"])
def test_a_page_size_that_is_not_a_count_is_a_400_naming_page_size(api_client, url, page_size):
    response = api_client.get(url, {"page_size": page_size})
    assert response.status_code == 400
    assert list(response.json()) == ["page_size"]


def test_a_page_past_the_last_is_still_a_404_and_a_large_page_size_is_capped(api_client):
    SegmentFactory.create_batch(3)
    assert api_client.get("/api/v1/segments", {"page": 2}).status_code == 404
    response = api_client.get("/api/v1/segments", {"page_size": 100000, "page": "last"})
    assert response.status_code == 200 and response.json()["count"] == 3


def test_the_goal_list_refuses_a_year_that_is_not_a_number_naming_it(api_client):
    response = api_client.get("/api/v1/goals", {"year": "twenty"})
    assert response.status_code == 400 and list(response.json()) == ["year"]
    assert api_client.get("/api/v1/goals", {"year": "2026"}).status_code == 200


@pytest.mark.parametrize("filter_name", ["segment", "parent"])
@pytest.mark.parametrize("value", ["abc", "1180591620717411303424", "-1"])
def test_an_id_filter_that_is_no_id_is_a_400_naming_it(api_client, filter_name, value):
    response = api_client.get("/api/v1/campaigns", {filter_name: value})
    assert response.status_code == 400 and list(response.json()) == [filter_name]


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/api/v1/churn", "sample"),
        ("/api/v1/churn", "churn_days"),
        ("/api/v1/indicators/retention", "periods"),
        ("/api/v1/key-behaviour?event=search", "first_days"),
    ],
)
@pytest.mark.parametrize("value", ["abc", "99999999999999999999999", "-1"])
def test_integer_query_parameters_are_a_400_naming_them(api_client, url, param, value):
    response = api_client.get(url, {param: value})
    assert response.status_code == 400
    assert param in response.json()


@pytest.mark.django_db
def test_an_issuance_job_takes_a_segment_whose_id_is_past_32_bits(api_client):
    from django.db import connection

    from campaigns.models import Segment
    from tests.factories.coupons import CouponRuleFactory

    sequence = "pg_get_serial_sequence('campaigns_segment', 'id')"
    with connection.cursor() as cursor:
        cursor.execute("SELECT last_value, is_called FROM campaigns_segment_id_seq")
        before = cursor.fetchone()
        # Sequences stand outside transactions: put it back for the tests that follow.
        cursor.execute(f"SELECT setval({sequence}, 3000000000)")
    try:
        segment = Segment.objects.create(name="big id", definition={"tag": "x"})
        assert segment.pk > 2**31
        rule = CouponRuleFactory()
        response = api_client.post(
            f"/api/v1/coupon-rules/{rule.pk}/issuance-jobs", {"segment": segment.pk}, format="json"
        )
        assert response.status_code == 202, response.content
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT setval({sequence}, %s, %s)", list(before))
