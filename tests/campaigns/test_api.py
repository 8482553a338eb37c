"""The campaigns API as the contract states it: create, launch (202), pause/resume, rollout,
results, receipts, and the signed tracking links."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from access.models import AuditEntry
from campaigns import channels, services
from campaigns.models import Campaign, CampaignStatus, ChannelKind, Delivery
from tests.factories.campaigns import CampaignFactory, ChannelFactory, SegmentFactory, make_profiles

pytestmark = pytest.mark.django_db


def _body(seg, **extra):
    return {
        "name": "Spring push",
        "segment": seg.pk,
        "channel": "push",
        "goal_event": "order_paid",
        "attribution_hours": 72,
        "holdout_percent": 10,
        "pilot_percent": 5,
        "variants": [
            {"name": "A", "weight": 50, "title": "Hi", "body": "Spring sale", "url": "https://x.example/a"},
            {"name": "B", "weight": 50, "title": "Hey", "body": "Spring deals", "url": "https://x.example/b"},
        ],
        "schedule": {"at": "2030-01-01T09:00:00+08:00"},
        "frequency_cap_per_day": 1,
        "respect_quiet_hours": True,
        **extra,
    }


def test_create_campaign_returns_a_draft_with_its_variants(api_client):
    segment = SegmentFactory()
    response = api_client.post("/api/v1/campaigns", _body(segment), format="json")
    assert response.status_code == 201, response.json()
    data = response.json()
    assert data["status"] == "draft" and [v["name"] for v in data["variants"]] == ["A", "B"]
    assert data["schedule"] == {"at": "2030-01-01T01:00:00+00:00"}
    assert AuditEntry.objects.filter(action="campaigns.campaign_created", object_id=str(data["id"])).exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"channel": "fax"}, "channel"),
        ({"segment": 987654}, "segment"),
        ({"schedule": {"at": "2030-01-01T09:00:00"}}, "schedule"),
        ({"schedule": {"cron": "61 * * * *"}, "pilot_percent": 0}, "schedule"),
        ({"holdout_percent": 60, "pilot_percent": 50}, "pilot_percent"),
        ({"schedule": {"trigger_event": "cart_abandoned"}}, "pilot_percent"),
        ({"variants": [{"name": "A"}, {"name": "A"}]}, "variants"),
    ],
)
def test_invalid_campaigns_get_a_400_naming_the_field(api_client, change, field):
    response = api_client.post("/api/v1/campaigns", _body(SegmentFactory(), **change), format="json")
    assert response.status_code == 400
    assert field in response.json()


def test_launch_is_accepted_and_a_second_launch_conflicts(api_client):
    make_profiles(5)
    ChannelFactory(kind=ChannelKind.PUSH, url="http://127.0.0.1:9/never")
    campaign = CampaignFactory(schedule_kind="at", send_at=timezone.now() + dt.timedelta(hours=1))
    first = api_client.post(f"/api/v1/campaigns/{campaign.pk}/launch")
    assert first.status_code == 202 and first.json()["status"] == "scheduled"
    again = api_client.post(f"/api/v1/campaigns/{campaign.pk}/launch")
    assert again.status_code == 409 and again.json()["reason"] == "INVALID_STATUS"
    assert api_client.post(f"/api/v1/campaigns/{campaign.pk}/pause").json()["status"] == "paused"
    assert api_client.post(f"/api/v1/campaigns/{campaign.pk}/resume").json()["status"] == "scheduled"
    assert api_client.post("/api/v1/campaigns/999999/launch").status_code == 404


def test_launch_without_a_configured_gateway_is_refused():
    campaign = CampaignFactory(channel=ChannelKind.SMS)
    ChannelFactory(kind=ChannelKind.SMS, url="")
    with pytest.raises(services.errors.ChannelNotConfigured):
        services.launch_campaign(campaign_id=campaign.pk)


def test_rollout_before_any_significant_result_needs_a_named_variant_and_a_confirmation(api_client):
    make_profiles(40)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, pilot_percent=Decimal(50))
    services.start_send(campaign_id=campaign.pk)
    url = f"/api/v1/campaigns/{campaign.pk}/rollout"
    refused = api_client.post(url, {}, format="json")
    assert refused.status_code == 422 and refused.json()["reason"] == "NO_SIGNIFICANT_WINNER"
    unconfirmed = api_client.post(url, {"variant": "B"}, format="json")
    assert unconfirmed.status_code == 422 and unconfirmed.json()["reason"] == "CONFIRMATION_REQUIRED"
    assert "not shown to be better" in unconfirmed.json()["risk"]
    assert not AuditEntry.objects.filter(action="campaigns.campaign_rolled_out").exists()
    done = api_client.post(url, {"variant": "B", "confirm": True}, format="json")
    assert done.status_code == 200 and done.json()["phase"] == "rollout" and done.json()["winner"] == "B"
    assert Delivery.objects.filter(campaign=campaign, phase="rollout", variant__name="B").count() == 16
    audit = AuditEntry.objects.get(action="campaigns.campaign_rolled_out")
    assert audit.details["confirmed"] is True and audit.details["supported"] is False
    assert "not shown to be better" in audit.details["risk"]


def test_cron_campaign_creates_an_editable_beat_schedule(api_client):
    from django_celery_beat.models import PeriodicTask

    ChannelFactory(kind=ChannelKind.PUSH, url="http://127.0.0.1:9/never")
    body = _body(SegmentFactory(), pilot_percent=0, schedule={"cron": "0 10 * * 1"})
    created = api_client.post("/api/v1/campaigns", body, format="json").json()
    api_client.post(f"/api/v1/campaigns/{created['id']}/launch")
    task = Campaign.objects.get(pk=created["id"]).periodic_task
    assert task.task == "campaigns.tasks.run_recurring" and task.enabled
    assert (task.crontab.minute, task.crontab.hour, task.crontab.day_of_week) == ("0", "10", "1")
    api_client.post(f"/api/v1/campaigns/{created['id']}/pause")
    assert not PeriodicTask.objects.get(pk=task.pk).enabled


def test_results_and_detail_follow_the_contract(api_client):
    make_profiles(20)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING)
    services.start_send(campaign_id=campaign.pk)
    detail = api_client.get(f"/api/v1/campaigns/{campaign.pk}").json()
    assert detail["phase"] == "full" and detail["counters"]["pending"] == 18
    results = api_client.get(f"/api/v1/campaigns/{campaign.pk}/results").json()
    assert [g["name"] for g in results["groups"]] == ["holdout", "A", "B"]
    for key in ("status", "phase", "srm_p_value", "winner"):
        assert key in results
    assert set(results["groups"][1]) >= {
        "assigned",
        "sent",
        "delivered",
        "failed",
        "opened",
        "clicked",
        "converted",
        "conversion_rate",
        "ci_low",
        "ci_high",
        "uplift_vs_holdout",
        "p_value",
    }


def test_receipts_are_idempotent_and_unknown_ids_are_rejected_per_item(make_api_client):
    make_profiles(2)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
    services.start_send(campaign_id=campaign.pk)
    d = Delivery.objects.filter(campaign=campaign).first()
    Delivery.objects.filter(pk=d.pk).update(status="sent", sent_at=timezone.now())
    client = make_api_client("events:write")
    body = {
        "receipts": [
            {"delivery_id": d.pk, "status": "delivered", "at": "2030-01-01T00:00:00Z"},
            {"delivery_id": 99999999, "status": "opened", "at": "2030-01-01T00:00:00Z"},
            {"delivery_id": d.pk, "status": "bounced", "at": "2030-01-01T00:00:00Z"},
        ]
    }
    first = client.post("/api/v1/deliveries/receipts", body, format="json")
    assert first.status_code == 200
    assert first.json()["accepted"] == 1 and [r["index"] for r in first.json()["rejected"]] == [1, 2]
    later = {"receipts": [{"delivery_id": d.pk, "status": "delivered", "at": "2030-02-01T00:00:00Z"}]}
    client.post("/api/v1/deliveries/receipts", later, format="json")
    d.refresh_from_db()
    assert d.status == "delivered" and d.delivered_at.year == 2030 and d.delivered_at.month == 1


def test_click_link_redirects_to_the_variant_and_records_the_click(client):
    make_profiles(1)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
    services.start_send(campaign_id=campaign.pk)
    d = Delivery.objects.get(campaign=campaign)
    response = client.get(f"/api/v1/t/c/{channels.click_token(d.pk)}")
    assert response.status_code == 302 and response["Location"] == d.variant.url
    d.refresh_from_db()
    assert d.clicked_at is not None and d.opened_at is not None
    assert client.get(f"/api/v1/t/c/{d.pk}:forged").status_code == 404
    pixel = client.get(f"/api/v1/t/o/{channels.open_token(d.pk)}.gif")
    assert pixel.status_code == 200 and pixel["Content-Type"] == "image/gif"
    # A click token is no open token: signatures are salted per purpose.
    assert client.get(f"/api/v1/t/o/{channels.click_token(d.pk)}.gif").status_code == 404


def test_campaign_list_runs_a_fixed_number_of_queries(api_client, django_assert_max_num_queries):
    for _ in range(6):
        CampaignFactory()
    with django_assert_max_num_queries(6):
        response = api_client.get("/api/v1/campaigns?page_size=50")
    assert response.status_code == 200 and response.json()["count"] == 6
    assert len(response.json()["results"][0]["variants"]) == 2


def test_customer_service_view_lists_the_persons_messages():
    from profiles.lookup import sections_for

    (person,) = make_profiles(1)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
    services.start_send(campaign_id=campaign.pk)
    messages = sections_for(person)["messages"]
    assert [(m["campaign"], m["status"]) for m in messages] == [(campaign.name, "pending")]
