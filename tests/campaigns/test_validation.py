"""Campaign configurations that cannot work are refused with the field and the reason: at create
(API and admin form) and, for a draft that stopped working since, by `launch_problems`."""

import datetime as dt
from decimal import Decimal

import pytest
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.models import Campaign, Channel, ChannelKind, ScheduleKind, Segment
from campaigns.validation import cron_problem, launch_problems, share_problems, variant_problems
from tests.factories.campaigns import CampaignFactory, ChannelFactory, SegmentFactory, campaign_admin_form
from tests.factories.tracking import EventFactory

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 12, 6, 8, 0, tzinfo=dt.UTC)


# --- the rules on their own --------------------------------------------------------------------


@pytest.mark.parametrize("cron", ["0 0 31 2 *", "0 0 30 2 *", "0 9 31 4 *", "0 0 31 2 1"])
def test_a_cron_that_never_fires_is_refused_with_the_reason(cron):
    assert "never" in cron_problem(cron, now=NOW)


@pytest.mark.parametrize("cron", ["0 0 29 2 *", "0 0 31 * *", "*/5 * * * *", "0 9 * * 1-5", "30 8 1 1 *"])
def test_a_cron_with_a_next_run_is_accepted(cron):
    assert cron_problem(cron, now=NOW) is None


@pytest.mark.parametrize(
    ("cron", "reason"),
    [("61 * * * *", "Invalid cron"), ("0 0 * * 7", "Invalid cron"), ("0 0 * *", "Five fields"), ("", "Five fields")],
)
def test_a_cron_celery_beat_cannot_read_is_refused(cron, reason):
    assert reason in cron_problem(cron, now=NOW)


@given(
    holdout=st.decimals(min_value=0, max_value=Decimal("99.99"), places=2),
    pilot=st.decimals(min_value=0, max_value=Decimal("99.99"), places=2),
)
def test_shares_are_refused_exactly_when_outside_the_allowed_shapes(holdout, pilot):
    problems = share_problems(holdout, pilot)
    if holdout > 90:
        assert "holdout_percent" in problems
    if pilot > 90 or holdout + pilot >= 100:
        assert "pilot_percent" in problems
    if holdout <= 90 and pilot <= 90 and holdout + pilot < 100:
        assert problems == {}


NAMES = st.sampled_from(["A", "B", "C", "D", "holdout", "rollout", "long name", "E"])


@given(variants=st.lists(st.tuples(NAMES, st.integers(min_value=0, max_value=100)), max_size=10))
def test_variants_are_refused_exactly_when_they_cannot_be_picked_apart(variants):
    names = [name for name, _ in variants]
    valid = (
        1 <= len(variants) <= 8
        and len(set(names)) == len(names)
        and not {"holdout", "rollout"} & set(names)
        and sum(weight for _, weight in variants) > 0
    )
    problems = variant_problems(variants)
    assert (problems == {}) == valid
    assert set(problems) <= {"variants"}


def test_variant_weights_summing_to_zero_say_why():
    assert "sum to 0" in variant_problems([("A", 0), ("B", 0)])["variants"]


# --- launch_problems ---------------------------------------------------------------------------


@pytest.fixture
def push_gateway():
    return ChannelFactory(kind=ChannelKind.PUSH, url="http://127.0.0.1:9/never")


def test_a_draft_that_still_works_has_no_launch_problems(push_gateway):
    assert launch_problems(CampaignFactory()) == {}


def test_launch_problems_name_a_segment_whose_definition_no_longer_compiles(push_gateway):
    campaign = CampaignFactory()
    Segment.objects.filter(pk=campaign.segment_id).update(definition={"tag": "x", "colour": "red"})
    campaign.refresh_from_db()
    assert "no longer compiles" in launch_problems(campaign)["segment"]


def test_launch_problems_name_a_segment_that_no_longer_exists(push_gateway):
    campaign = CampaignFactory()
    # The foreign key protects a segment in use; a campaign that points nowhere is still answered.
    campaign.segment_id = Segment.objects.order_by("-pk").values_list("pk", flat=True).first() + 1000
    assert "No segment" in launch_problems(campaign)["segment"]


def test_launch_problems_name_a_disabled_channel():
    Channel.objects.update_or_create(kind=ChannelKind.PUSH, defaults={"url": "http://127.0.0.1:9/x", "enabled": False})
    assert "disabled" in launch_problems(CampaignFactory())["channel"]


def test_launch_problems_name_a_channel_without_a_gateway(settings):
    settings.OPSLOOP_SMS_GATEWAY_URL = ""
    Channel.objects.filter(kind=ChannelKind.SMS).update(url="")
    assert "no gateway URL" in launch_problems(CampaignFactory(channel=ChannelKind.SMS))["channel"]


def test_launch_problems_name_a_cron_that_never_fires(push_gateway):
    campaign = CampaignFactory(schedule_kind=ScheduleKind.CRON, cron="0 0 31 2 *")
    assert "never" in launch_problems(campaign)["cron"]


def test_launch_problems_name_variant_weights_summing_to_zero(push_gateway):
    campaign = CampaignFactory(variants=[("A", 0), ("B", 0)])
    assert "sum to 0" in launch_problems(campaign)["variants"]


def test_launch_problems_name_a_campaign_without_variants(push_gateway):
    campaign = CampaignFactory()
    campaign.variants.all().delete()
    assert "this one has 0" in launch_problems(campaign)["variants"]


def test_launch_problems_name_every_problem_at_once():
    Channel.objects.update_or_create(kind=ChannelKind.PUSH, defaults={"enabled": False})
    campaign = CampaignFactory(schedule_kind=ScheduleKind.CRON, cron="0 0 30 2 *", variants=[("A", 0)])
    Segment.objects.filter(pk=campaign.segment_id).update(definition={"all": "nope"})
    campaign.refresh_from_db()
    assert set(launch_problems(campaign)) == {"segment", "channel", "cron", "variants"}


# --- the create endpoint -----------------------------------------------------------------------


def _body(segment_id, **extra):
    return {
        "name": "Autumn push",
        "segment": segment_id,
        "channel": "push",
        "holdout_percent": 10,
        "pilot_percent": 0,
        "variants": [{"name": "A", "weight": 50, "title": "Hi", "body": "Autumn sale"}],
        **extra,
    }


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"schedule": {"cron": "0 0 31 2 *"}}, "schedule", "never"),
        ({"holdout_percent": 95}, "holdout_percent", "0 to 90"),
        ({"pilot_percent": Decimal("90.5")}, "pilot_percent", "0 to 90"),
        ({"holdout_percent": 50, "pilot_percent": 50}, "pilot_percent", "below 100"),
        ({"variants": [{"name": f"V{i}"} for i in range(9)]}, "variants", "no more than 8"),
        ({"variants": [{"name": "holdout"}]}, "variants", "holdout"),
        ({"variants": [{"name": "A"}, {"name": "A"}]}, "variants", "unique"),
        ({"channel": "carrier-pigeon"}, "channel", "not a valid choice"),
        ({"segment": 2**63}, "segment", "from 1 to 9223372036854775807"),
        ({"segment": 0}, "segment", "from 1 to 9223372036854775807"),
        ({"segment": True}, "segment", "valid integer"),
    ],
)
def test_create_refuses_a_configuration_that_cannot_work(api_client, change, field, reason):
    response = api_client.post("/api/v1/campaigns", _body(SegmentFactory().pk, **change), format="json")
    assert response.status_code == 400, response.json()
    assert reason in str(response.json()[field])
    assert not Campaign.objects.exists()


def test_create_refuses_a_segment_that_does_not_exist(api_client):
    missing = SegmentFactory().pk + 1000
    response = api_client.post("/api/v1/campaigns", _body(missing), format="json")
    assert response.status_code == 400
    assert response.json()["segment"] == [f"No segment {missing}."]


def test_create_refuses_a_segment_whose_definition_no_longer_compiles(api_client):
    segment = SegmentFactory()
    Segment.objects.filter(pk=segment.pk).update(definition={"tier": 5})
    response = api_client.post("/api/v1/campaigns", _body(segment.pk), format="json")
    assert response.status_code == 400 and "no longer compiles" in response.json()["segment"][0]


def test_create_refuses_an_unknown_coupon_rule_naming_it(api_client):
    body = _body(SegmentFactory().pk, variants=[{"name": "A", "coupon_rule": 2**70}])
    response = api_client.post("/api/v1/campaigns", body, format="json")
    assert response.status_code == 400
    assert response.json()["variants"] == {
        "0": {"coupon_rule": ["An id is a whole number from 1 to 9223372036854775807."]}
    }
    body = _body(SegmentFactory().pk, variants=[{"name": "A", "coupon_rule": 424242}])
    response = api_client.post("/api/v1/campaigns", body, format="json")
    assert response.json()["variants"] == {"0": {"coupon_rule": ["No coupon rule 424242."]}}


SHAPES = st.fixed_dictionaries(
    {
        "holdout_percent": st.integers(min_value=0, max_value=99),
        "pilot_percent": st.integers(min_value=0, max_value=99),
        "variants": st.lists(st.sampled_from(["A", "B", "C", "holdout", "D", "E", "F", "G", "H", "I"]), max_size=10),
        "cron": st.sampled_from([None, "0 9 * * 1", "0 0 31 2 *", "0 0 29 2 *", "0 0 31 4 *"]),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=SHAPES)
def test_drawn_campaign_shapes_are_accepted_when_valid_and_refused_with_the_field_when_not(api_client, shape):
    segment = SegmentFactory()
    names = shape["variants"]
    body = _body(
        segment.pk,
        holdout_percent=shape["holdout_percent"],
        pilot_percent=shape["pilot_percent"] if not shape["cron"] else 0,
        variants=[{"name": name, "weight": 10} for name in names],
    )
    if shape["cron"]:
        body["schedule"] = {"cron": shape["cron"]}
    expected = set()
    if not 1 <= len(names) <= 8 or len(set(names)) != len(names) or "holdout" in names:
        expected.add("variants")
    if body["holdout_percent"] > 90:
        expected.add("holdout_percent")
    if body["pilot_percent"] > 90 or body["holdout_percent"] + body["pilot_percent"] >= 100:
        expected.add("pilot_percent")
    if shape["cron"] in ("0 0 31 2 *", "0 0 31 4 *"):
        expected.add("schedule")
    response = api_client.post("/api/v1/campaigns", body, format="json")
    if not expected:
        assert response.status_code == 201, response.json()
        assert Campaign.objects.filter(pk=response.json()["id"]).exists()
    else:
        assert response.status_code == 400
        # Field-level errors come before the cross-field ones, so at least one expected field is named
        # and none that is fine.
        named = set(response.json())
        assert named and named <= expected, (named, expected)


# --- the admin form ----------------------------------------------------------------------------


@pytest.fixture
def operator(client, make_staff):
    client.force_login(make_staff(superuser=True))
    return client


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"cron": "0 0 31 2 *"}, b"never"),
        ({"holdout_percent": "95"}, b"The holdout is 0 to 90"),
        ({"holdout_percent": "60", "schedule_kind": "now", "pilot_percent": "45"}, b"below 100%"),
    ],
)
def test_admin_form_refuses_a_configuration_that_cannot_work(operator, change, reason):
    response = operator.post(reverse("admin:campaigns_campaign_add"), campaign_admin_form(SegmentFactory(), **change))
    assert response.status_code == 200
    assert reason in response.content
    assert not Campaign.objects.filter(name="Monthly").exists()


def test_admin_form_refuses_a_segment_whose_definition_no_longer_compiles(operator):
    segment = SegmentFactory()
    Segment.objects.filter(pk=segment.pk).update(definition={"tier": 5})
    response = operator.post(reverse("admin:campaigns_campaign_add"), campaign_admin_form(segment))
    assert response.status_code == 200 and b"no longer compiles" in response.content
    assert not Campaign.objects.filter(name="Monthly").exists()


@pytest.mark.parametrize(
    ("variants", "reason"),
    [
        ({"variants-0-weight": 0}, b"sum to 0"),
        ({"variants-0-name": "holdout"}, b"names a group of the results"),
    ],
)
def test_admin_form_refuses_variants_that_cannot_be_picked_apart(operator, variants, reason):
    response = operator.post(reverse("admin:campaigns_campaign_add"), campaign_admin_form(SegmentFactory(), **variants))
    assert response.status_code == 200
    assert reason in response.content
    assert not Campaign.objects.filter(name="Monthly").exists()


def test_admin_form_accepts_a_configuration_that_works(operator):
    response = operator.post(reverse("admin:campaigns_campaign_add"), campaign_admin_form(SegmentFactory()))
    assert response.status_code == 302
    assert Campaign.objects.get(name="Monthly").cron == "0 9 1 * *"


# --- a trigger on an event never seen: allowed, with a warning ---------------------------------


def test_a_trigger_on_an_unseen_event_is_created_and_its_detail_warns(api_client):
    body = _body(SegmentFactory().pk, schedule={"trigger_event": "wishlist_added"})
    created = api_client.post("/api/v1/campaigns", body, format="json")
    assert created.status_code == 201, created.json()
    detail = api_client.get(f"/api/v1/campaigns/{created.json()['id']}").json()
    assert detail["warnings"] == [
        "No event named 'wishlist_added' has been recorded yet: the campaign sends only once the product "
        "sends one (check the spelling)."
    ]
    EventFactory(name="wishlist_added")
    assert api_client.get(f"/api/v1/campaigns/{created.json()['id']}").json()["warnings"] == []


def test_a_trigger_on_an_unseen_event_warns_on_the_admin_change_page(operator):
    campaign = CampaignFactory(schedule_kind=ScheduleKind.TRIGGER, trigger_event="wishlist_added")
    page = operator.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert b"No event named &#x27;wishlist_added&#x27; has been recorded yet" in page.content
    EventFactory(name="wishlist_added")
    page = operator.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert b"has been recorded yet" not in page.content


def test_the_launch_refuses_a_draft_that_stopped_working_with_the_fields(push_gateway, api_client):
    campaign = CampaignFactory()
    Segment.objects.filter(pk=campaign.segment_id).update(definition={"nonsense": 1})
    Campaign.objects.filter(pk=campaign.pk).update(schedule_kind=ScheduleKind.CRON, cron="0 0 31 2 *")
    response = api_client.post(f"/api/v1/campaigns/{campaign.pk}/launch")
    assert response.status_code == 422, response.content
    body = response.json()
    assert body["reason"] == "INVALID_CONFIGURATION"
    assert set(body["fields"]) == {"segment", "cron"}
    assert "never" in body["fields"]["cron"]
    campaign.refresh_from_db()
    assert campaign.status == "draft" and campaign.launched_at is None
