"""Cancelling a campaign: nothing more goes out, whatever its state, and what went out keeps its
results. Sent against a real local HTTP gateway."""

import datetime as dt
import threading
import time
import uuid
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from access.models import AuditEntry
from campaigns import errors, services
from campaigns.models import Campaign, CampaignStatus, ChannelKind, Delivery
from tests.campaigns.receiver import Receiver
from tests.factories.campaigns import CampaignFactory, ChannelFactory, make_profiles

pytestmark = pytest.mark.django_db


def test_a_cancelled_campaign_sends_none_of_its_pending_messages_and_keeps_what_was_sent():
    make_profiles(6)
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
        services.start_send(campaign_id=campaign.pk)
        ids = list(Delivery.objects.filter(campaign=campaign).order_by("id").values_list("id", flat=True))
        services.deliver(delivery_ids=ids[:2])

        services.cancel_campaign(campaign_id=campaign.pk)
        services.deliver(delivery_ids=ids)
        services.sweep(stale_after=dt.timedelta(0), requeue_after=dt.timedelta(0))

    assert len(gateway.requests) == 2
    assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.CANCELLED
    rows = Delivery.objects.filter(campaign=campaign)
    assert sorted(rows.filter(status="sent").values_list("id", flat=True)) == ids[:2]
    assert set(rows.exclude(pk__in=ids[:2]).values_list("status", "reason")) == {("skipped", "campaign cancelled")}
    entry = AuditEntry.objects.get(action="campaigns.campaign_cancelled", object_id=str(campaign.pk))
    assert entry.details == {"from": "running", "pending_skipped": 4}


def test_a_message_stuck_mid_send_when_its_campaign_was_cancelled_is_not_sent_again():
    make_profiles(2)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
    services.start_send(campaign_id=campaign.pk)
    stuck, waiting = Delivery.objects.filter(campaign=campaign).order_by("id")
    Delivery.objects.filter(pk=stuck.pk).update(status="sending", claimed_at=timezone.now() - dt.timedelta(hours=1))
    services.cancel_campaign(campaign_id=campaign.pk)
    assert Delivery.objects.get(pk=stuck.pk).status == "sending"  # a worker may be posting it

    report = services.sweep(stale_after=dt.timedelta(minutes=5), requeue_after=dt.timedelta(0))

    assert report["unstuck"] == 0
    assert {d.pk: (d.status, d.reason) for d in Delivery.objects.filter(campaign=campaign)} == {
        stuck.pk: ("skipped", "campaign cancelled"),
        waiting.pk: ("skipped", "campaign cancelled"),
    }


def test_a_recurring_campaign_cancelled_from_the_admin_stops_its_schedule(client, make_staff):
    client.force_login(make_staff("Operations"))
    operator = client
    ChannelFactory(kind=ChannelKind.PUSH, url="http://127.0.0.1:9/never")
    campaign = CampaignFactory(schedule_kind="cron", cron="0 9 * * *")
    url = reverse("admin:campaigns_campaign_changelist")
    operator.post(url, {"action": "launch", "_selected_action": [campaign.pk]})
    task = PeriodicTask.objects.get(pk=Campaign.objects.get(pk=campaign.pk).periodic_task_id)
    assert task.enabled

    operator.post(url, {"action": "cancel", "_selected_action": [campaign.pk]})

    assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.CANCELLED
    task.refresh_from_db()
    assert not task.enabled
    # Nothing brings it back.
    for action in ("resume", "launch", "cancel"):
        operator.post(url, {"action": action, "_selected_action": [campaign.pk]})
        assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.CANCELLED, action
    task.refresh_from_db()
    assert not task.enabled


def test_a_cancelled_campaign_is_cloned_as_a_draft_to_mend_and_launch_again():
    campaign = CampaignFactory(status=CampaignStatus.RUNNING)
    services.cancel_campaign(campaign_id=campaign.pk)

    clone = services.clone_campaign(campaign_id=campaign.pk)

    assert clone.status == CampaignStatus.DRAFT and clone.parent_id == campaign.pk
    assert list(clone.variants.order_by("position").values_list("name", "title")) == list(
        campaign.variants.order_by("position").values_list("name", "title")
    )
    assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.CANCELLED


def test_staff_who_may_not_send_may_not_cancel(client, make_staff):
    campaign = CampaignFactory(status=CampaignStatus.RUNNING)
    client.force_login(make_staff("Analyst"))
    client.post(reverse("admin:campaigns_campaign_changelist"), {"action": "cancel", "_selected_action": [campaign.pk]})
    assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.RUNNING


@pytest.mark.parametrize("status", [CampaignStatus.SENT, CampaignStatus.COMPLETED, CampaignStatus.CANCELLED])
def test_an_ended_campaign_cannot_be_cancelled(status):
    campaign = CampaignFactory(status=status)
    with pytest.raises(errors.InvalidTransition):
        services.cancel_campaign(campaign_id=campaign.pk)
    assert Campaign.objects.get(pk=campaign.pk).status == status


def test_the_api_cancels_once_and_then_answers_409(api_client):
    ChannelFactory(kind=ChannelKind.PUSH, url="http://127.0.0.1:9/never")
    campaign = CampaignFactory(schedule_kind="at", send_at=timezone.now() + dt.timedelta(hours=1))
    api_client.post(f"/api/v1/campaigns/{campaign.pk}/launch")

    first = api_client.post(f"/api/v1/campaigns/{campaign.pk}/cancel")
    again = api_client.post(f"/api/v1/campaigns/{campaign.pk}/cancel")

    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    assert again.status_code == 409 and again.json()["reason"] == "INVALID_STATUS"
    assert api_client.post("/api/v1/campaigns/999999/cancel").status_code == 404
    # Its time comes and goes: the sweeper does not start it.
    Campaign.objects.filter(pk=campaign.pk).update(send_at=timezone.now() - dt.timedelta(minutes=1))
    assert services.sweep()["started"] == 0


@pytest.mark.django_db(transaction=True)
def test_a_trigger_handled_while_its_campaign_is_being_cancelled_creates_no_message():
    (person,) = make_profiles(1)
    campaign = CampaignFactory(
        status=CampaignStatus.RUNNING, schedule_kind="trigger", trigger_event="cart_abandoned", holdout_percent=0
    )
    items = [[campaign.pk, person.user_id, str(uuid.uuid4()), timezone.now().isoformat()]]
    locked = threading.Event()

    def cancel_and_commit_a_moment_later() -> None:
        try:
            with transaction.atomic():
                services.cancel_campaign(campaign_id=campaign.pk)
                locked.set()
                time.sleep(1)
        finally:
            connection.close()

    canceller = threading.Thread(target=cancel_and_commit_a_moment_later)
    canceller.start()
    assert locked.wait(10)
    created = services.handle_triggers(items=items)  # waits for the cancel, then sees it
    canceller.join()

    assert created == 0
    assert not Delivery.objects.filter(campaign=campaign).exists()
