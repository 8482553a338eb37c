"""Campaigns triggered by a tag gain: the sweeper picks up new 'added' tag changes after the
launch and starts the same triggered send as an event trigger (segment, holdout, consent, delay),
at most once per person and campaign."""

import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from campaigns import services
from campaigns.models import Campaign, CampaignStatus, ChannelKind, Delivery
from profiles import services as profile_services
from profiles.models import Tag, TagChange
from tests.factories.campaigns import CampaignFactory, ChannelFactory, SegmentFactory, gain_tag, make_profiles

pytestmark = pytest.mark.django_db

TAG = "churn_warning"


def _launched(**fields) -> Campaign:
    ChannelFactory(kind=ChannelKind.PUSH, url="http://127.0.0.1:9/never")
    fields.setdefault("holdout_percent", Decimal(0))
    fields.setdefault("delay_minutes", 60)
    campaign = CampaignFactory(schedule_kind="trigger", trigger_tag=TAG, **fields)
    return services.launch_campaign(campaign_id=campaign.pk)


def test_a_tag_gained_after_launch_triggers_one_delivery_after_the_delay(django_capture_on_commit_callbacks):
    people = make_profiles(3)
    campaign = _launched()
    assert campaign.status == CampaignStatus.RUNNING and campaign.phase == "triggered"
    gain_tag(TAG, people[:1])
    with django_capture_on_commit_callbacks():
        report = services.sweep()
    assert report["tag_triggered"] == 1
    delivery = Delivery.objects.get(campaign=campaign)
    gained_at = TagChange.objects.get(profile=people[0], tag__name=TAG).at
    assert delivery.user_id == people[0].user_id and delivery.phase == f"tag:{TAG}"
    assert delivery.status == "pending" and delivery.not_before == gained_at + dt.timedelta(minutes=60)
    assert delivery.queued_at is None  # not due before the delay has passed
    assert services.sweep()["tag_triggered"] == 0
    # A gain the sweeper sees once its delay has already passed is queued at once.
    gain_tag(TAG, people[1:2], ago=dt.timedelta(minutes=61))
    with django_capture_on_commit_callbacks() as callbacks:
        report = services.sweep()
    assert report["tag_triggered"] == 1 and report["queued"] == 0 and len(callbacks) == 1
    due = Delivery.objects.get(campaign=campaign, profile=people[1])
    assert due.queued_at is not None
    assert Delivery.objects.filter(campaign=campaign).count() == 2
    assert Campaign.objects.get(pk=campaign.pk).trigger_tag_cursor == TagChange.objects.latest("id").id


def test_a_tag_gained_before_launch_does_not_trigger():
    people = make_profiles(2)
    gain_tag(TAG, people[:1])
    campaign = _launched()
    services.sweep()
    assert not Delivery.objects.filter(campaign=campaign).exists()
    gain_tag(TAG, people[1:])
    services.sweep()
    assert list(Delivery.objects.filter(campaign=campaign).values_list("user_id", flat=True)) == [people[1].user_id]


def test_regaining_the_tag_sends_at_most_once_per_phase():
    people = make_profiles(2)
    campaign = _launched()
    gain_tag(TAG, people)
    services.sweep()
    profile_services.untag_profiles(tag_name=TAG, profile_ids=[people[0].pk])
    gain_tag(TAG, people[:1])
    services.sweep()
    # Lost and regained between two sweeps: still one.
    profile_services.untag_profiles(tag_name=TAG, profile_ids=[people[1].pk])
    gain_tag(TAG, people[1:])
    profile_services.untag_profiles(tag_name=TAG, profile_ids=[people[1].pk])
    gain_tag(TAG, people[1:])
    services.sweep()
    assert TagChange.objects.filter(tag__name=TAG, action="added").count() == 5
    per_person = list(Delivery.objects.filter(campaign=campaign).values_list("user_id", "phase"))
    assert sorted(per_person) == sorted((p.user_id, f"tag:{TAG}") for p in people)


def test_holdout_members_and_non_members_get_nothing():
    people = make_profiles(200)
    outsiders = make_profiles(5, prefix="out", tag=None)
    campaign = _launched(holdout_percent=Decimal(30))
    gain_tag(TAG, people + outsiders)
    services.sweep()
    roles = dict(campaign.assignments.values_list("profile_id", "role"))
    holdout = {pid for pid, role in roles.items() if role == "holdout"}
    assert 30 <= len(holdout) <= 90 and not {p.pk for p in outsiders} & set(roles)
    delivered = set(Delivery.objects.filter(campaign=campaign).values_list("profile_id", flat=True))
    assert delivered == set(roles) - holdout
    assert not delivered & {p.pk for p in outsiders}


def test_a_person_without_consent_gets_no_message():
    consenting = make_profiles(1, prefix="yes")
    refusing = make_profiles(1, prefix="no", push_opt_in=False)
    campaign = _launched()
    gain_tag(TAG, consenting + refusing)
    services.sweep()
    skipped = Delivery.objects.get(campaign=campaign, profile=refusing[0])
    assert skipped.status == "skipped" and skipped.reason == "NO_CONSENT"
    assert Delivery.objects.get(campaign=campaign, profile=consenting[0]).status == "pending"


def test_paused_campaigns_wait_and_other_tags_do_not_trigger():
    people = make_profiles(2)
    campaign = _launched()
    gain_tag("something_else", people)
    services.pause_campaign(campaign_id=campaign.pk)
    gain_tag(TAG, people[:1])
    services.sweep()
    assert not Delivery.objects.filter(campaign=campaign).exists()
    services.resume_campaign(campaign_id=campaign.pk)
    services.sweep()
    assert list(Delivery.objects.filter(campaign=campaign).values_list("user_id", flat=True)) == [people[0].user_id]


def test_two_campaigns_watching_the_same_tag_each_send_once():
    people = make_profiles(3)
    first, second = _launched(), _launched()
    gain_tag(TAG, people)
    assert services.sweep()["tag_triggered"] == 6
    assert services.sweep()["tag_triggered"] == 0
    assert Delivery.objects.filter(campaign=first).count() == Delivery.objects.filter(campaign=second).count() == 3


def test_the_model_validates_the_trigger_for_the_admin_form():
    segment = SegmentFactory()
    both = Campaign(
        name="x", segment=segment, channel="push", schedule_kind="trigger", trigger_event="a", trigger_tag="b"
    )
    with pytest.raises(ValidationError) as both_error:
        both.full_clean()
    assert "trigger_tag" in both_error.value.message_dict
    bad = Campaign(name="x", segment=segment, channel="push", schedule_kind="trigger", trigger_tag="churn warning!")
    with pytest.raises(ValidationError) as bad_error:
        bad.full_clean()
    assert "trigger_tag" in bad_error.value.message_dict
    Campaign(name="x", segment=segment, channel="push", schedule_kind="trigger", trigger_tag=TAG).full_clean()


# --- API ---------------------------------------------------------------------------------------


def _body(segment, schedule, **extra):
    return {
        "name": "Churn save",
        "segment": segment.pk,
        "channel": "push",
        "variants": [{"name": "A", "title": "We miss you", "body": "10% off"}],
        "schedule": schedule,
        **extra,
    }


def test_api_creates_reads_and_clones_a_tag_triggered_campaign(api_client):
    response = api_client.post(
        "/api/v1/campaigns", _body(SegmentFactory(), {"trigger_tag": TAG, "delay_minutes": 60}), format="json"
    )
    assert response.status_code == 201, response.json()
    assert response.json()["schedule"] == {"trigger_tag": TAG, "delay_minutes": 60}
    campaign = Campaign.objects.get(pk=response.json()["id"])
    assert campaign.schedule_kind == "trigger" and campaign.trigger_tag == TAG and campaign.trigger_event == ""
    detail = api_client.get(f"/api/v1/campaigns/{campaign.pk}")
    assert detail.status_code == 200 and detail.json()["schedule"] == {"trigger_tag": TAG, "delay_minutes": 60}
    Campaign.objects.filter(pk=campaign.pk).update(status=CampaignStatus.COMPLETED, completed_at=timezone.now())
    clone = api_client.post(f"/api/v1/campaigns/{campaign.pk}/clone")
    assert clone.status_code == 201 and clone.json()["schedule"] == {"trigger_tag": TAG, "delay_minutes": 60}
    cloned = Campaign.objects.get(pk=clone.json()["id"])
    assert cloned.trigger_tag == TAG and cloned.trigger_tag_cursor == 0 and cloned.status == "draft"


@pytest.mark.parametrize(
    ("schedule", "extra", "field"),
    [
        ({"trigger_tag": "churn warning"}, {}, "trigger_tag"),
        ({"trigger_tag": "churn!"}, {}, "trigger_tag"),
        ({"trigger_tag": ""}, {}, "trigger_tag"),
        ({"trigger_tag": "x" * 65}, {}, "trigger_tag"),
        ({"trigger_tag": [TAG]}, {}, "trigger_tag"),
        ({"trigger_tag": TAG, "trigger_event": "cart_abandoned"}, {}, "non_field_errors"),
        ({"trigger_tag": TAG, "cron": "0 9 * * *"}, {}, "non_field_errors"),
        ({"trigger_tag": TAG, "delay_minutes": -1}, {}, "delay_minutes"),
    ],
)
def test_api_refuses_an_invalid_trigger_tag_naming_the_field(api_client, schedule, extra, field):
    response = api_client.post("/api/v1/campaigns", _body(SegmentFactory(), schedule, **extra), format="json")
    assert response.status_code == 400
    assert field in response.json()["schedule"], response.json()


def test_api_refuses_a_pilot_for_a_tag_triggered_campaign(api_client):
    body = _body(SegmentFactory(), {"trigger_tag": TAG}, pilot_percent=5)
    response = api_client.post("/api/v1/campaigns", body, format="json")
    assert response.status_code == 400 and "pilot_percent" in response.json()


@pytest.mark.django_db(transaction=True)
def test_a_gain_committed_late_under_a_lower_id_is_not_skipped(settings):
    """A long transaction (a nightly recompute) takes its tag change id before a quicker one
    commits a higher id: the sweeper must not move the cursor past the id still in flight."""
    import psycopg
    from django.db import connection

    settings.OPSLOOP_TAG_TRIGGER_LOCK_TIMEOUT_MS = 200
    people = make_profiles(2)
    campaign = _launched()
    tag = Tag.objects.create(name=TAG)
    with psycopg.connect(**connection.get_connection_params()) as recompute:
        recompute.execute(
            "INSERT INTO profiles_tagchange (profile_id, tag_id, action, source, at)"
            " VALUES (%s, %s, 'added', 'rule', now())",
            [people[0].pk, tag.pk],
        )
        gain_tag(TAG, people[1:])
        assert services.sweep()["tag_triggered"] == 0  # waits rather than skipping the row in flight
        assert Campaign.objects.get(pk=campaign.pk).trigger_tag_cursor < TagChange.objects.latest("id").id
        recompute.commit()
    assert services.sweep()["tag_triggered"] == 2
    assert Delivery.objects.filter(campaign=campaign).count() == 2
