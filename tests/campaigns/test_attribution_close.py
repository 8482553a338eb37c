"""The stored lifecycle after the last send: `sent` while conversions still count, `completed`
once the attribution window has closed (the beat task `close_attribution_windows`)."""

import datetime as dt
import importlib
import time
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from access.models import AuditEntry
from campaigns import selectors, services, tasks
from campaigns.models import Assignment, Campaign, CampaignPhase, CampaignStatus, Delivery
from profiles.models import ProfileTag
from tests.factories.campaigns import CampaignFactory, add_events, make_profiles
from tests.migrating import migrate_to, migrate_to_latest

MIGRATION = importlib.import_module("campaigns.migrations.0009_sent_status_and_attribution_close")


def _all_out(n: int = 40, hours_ago: float = 1, **kwargs) -> Campaign:
    """A running full send whose every message went out `hours_ago`, marked sent by the sweep."""
    make_profiles(n, prefix=kwargs.pop("prefix", "p"))
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0), **kwargs)
    services.start_send(campaign_id=campaign.pk)
    at = timezone.now() - dt.timedelta(hours=hours_ago)
    Delivery.objects.filter(campaign=campaign).update(status="sent", sent_at=at)
    Assignment.objects.filter(campaign=campaign).update(assigned_at=at)
    Campaign.objects.filter(pk=campaign.pk).update(phase=CampaignPhase.FULL)
    assert services.sweep()["sent"] >= 1
    campaign.refresh_from_db()
    return campaign


def _window_closed(campaign: Campaign, hours_ago: float = 1) -> None:
    """The window and its grace period for late events ended `hours_ago`."""
    Campaign.objects.filter(pk=campaign.pk).update(
        sent_at=timezone.now()
        - dt.timedelta(hours=campaign.attribution_hours + hours_ago)
        - selectors.attribution_grace()
    )


@pytest.mark.django_db
def test_the_last_send_makes_a_campaign_sent_not_completed():
    campaign = _all_out(attribution_hours=72)
    assert campaign.status == CampaignStatus.SENT
    assert campaign.sent_at is not None and campaign.completed_at is None
    assert selectors.attribution_closes_at(campaign) == campaign.sent_at + dt.timedelta(hours=72)
    assert selectors.shown_status(campaign).startswith("Sent; counting conversions until")
    assert not selectors.results_are_final(campaign)
    assert AuditEntry.objects.filter(action="campaigns.campaign_sent", object_id=str(campaign.pk)).count() == 1


@pytest.mark.django_db
def test_a_sent_campaign_stays_sent_while_its_window_is_open():
    campaign = _all_out(attribution_hours=72)
    report = services.close_attribution_windows()
    assert report["completed"] == 0
    assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.SENT


@pytest.mark.django_db
def test_closing_the_window_completes_with_the_conversions_made_after_the_last_send():
    campaign = _all_out(attribution_hours=24, variants=[("A", 50), ("B", 50)])
    frozen_at_send = {g["name"]: g["converted"] for g in campaign.results_snapshot["groups"]}
    b_users = list(campaign.assignments.filter(variant__name="B").values_list("user_id", flat=True))
    # Conversions after the last send, inside the window: the history must see them.
    add_events([(u, "order_paid", timezone.now() - dt.timedelta(minutes=30)) for u in b_users[:15]])
    _window_closed(campaign, hours_ago=0.1)

    report = services.close_attribution_windows()

    campaign.refresh_from_db()
    assert report["completed"] == 1 and report["feedback"] == 1
    assert campaign.status == CampaignStatus.COMPLETED and campaign.completed_at is not None
    final = {g["name"]: g["converted"] for g in campaign.results_snapshot["groups"]}
    assert frozen_at_send["B"] == 0 and final["B"] == 15
    assert campaign.winner is not None and campaign.winner.name == "B"
    assert (
        selectors.results_are_final(campaign)
        and selectors.shown_status(campaign) == "Completed (attribution window closed)"
    )
    # Recipients who responded are tagged once the window has closed.
    assert ProfileTag.objects.filter(tag__name="responds_to_push").count() == 15
    assert campaign.feedback_applied_at is not None


@pytest.mark.django_db
def test_closing_windows_twice_completes_each_campaign_once():
    campaign = _all_out()
    _window_closed(campaign)
    assert services.close_attribution_windows()["completed"] == 1
    completed_at = Campaign.objects.get(pk=campaign.pk).completed_at
    assert services.close_attribution_windows() == {"completed": 0, "feedback": 0, "failed": 0}
    assert Campaign.objects.get(pk=campaign.pk).completed_at == completed_at
    assert AuditEntry.objects.filter(action="campaigns.campaign_completed", object_id=str(campaign.pk)).count() == 1


@pytest.mark.django_db
def test_windows_close_in_batches_until_none_is_left():
    campaigns = [_all_out(n=3, prefix=f"b{i}x") for i in range(5)]
    open_one = _all_out(n=3, prefix="open")
    for campaign in campaigns:
        _window_closed(campaign)

    report = services.close_attribution_windows(batch_size=2)

    assert report["completed"] == 5
    statuses = dict(Campaign.objects.values_list("pk", "status"))
    assert {statuses[c.pk] for c in campaigns} == {CampaignStatus.COMPLETED}
    assert statuses[open_one.pk] == CampaignStatus.SENT


@pytest.mark.django_db
def test_a_campaign_that_fails_to_complete_shows_why_and_is_completed_by_the_next_run(monkeypatch):
    campaign = _all_out()
    _window_closed(campaign)

    def broken(campaign, **kwargs):
        raise RuntimeError("results store unavailable")

    monkeypatch.setattr(selectors, "campaign_results", broken)
    assert services.close_attribution_windows()["failed"] == 1
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.SENT
    assert "results store unavailable" in campaign.failure_reason
    monkeypatch.undo()

    assert services.close_attribution_windows()["completed"] == 1
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.COMPLETED and campaign.failure_reason == ""


@pytest.mark.django_db
def test_the_history_counts_live_while_sent_and_reads_the_snapshot_once_completed(client, make_staff):
    client.force_login(make_staff(superuser=True))
    campaign = _all_out(attribution_hours=72)
    a_users = list(campaign.assignments.values_list("user_id", flat=True))
    add_events([(u, "order_paid", timezone.now()) for u in a_users[:4]])
    url = reverse("admin:campaigns_campaign_history", args=[campaign.pk])

    (row,) = client.get(url).context["rows"]
    assert sum(g["converted"] for g in row["results"]["groups"]) == 4  # live, not the zeros of the send
    assert row["status"].startswith("Sent; counting conversions until")

    Campaign.objects.filter(pk=campaign.pk).update(
        status=CampaignStatus.COMPLETED, results_snapshot={"groups": [{"name": "A", "converted": 99}], "winner": None}
    )
    (row,) = client.get(url).context["rows"]
    assert row["results"]["groups"] == [{"name": "A", "converted": 99}]


@pytest.mark.django_db
def test_the_api_and_the_admin_filter_by_the_sent_status(api_client, client, make_staff):
    sent = _all_out(prefix="s")
    done = _all_out(prefix="d")
    _window_closed(done)
    services.close_attribution_windows()

    listed = api_client.get("/api/v1/campaigns", {"status": "sent"})
    assert listed.status_code == 200
    (item,) = listed.json()["results"]
    assert item["id"] == sent.pk and item["status"] == "sent"
    assert item["sent_at"] and item["completed_at"] is None
    assert dt.datetime.fromisoformat(item["attribution_closes_at"]) == selectors.attribution_closes_at(sent)
    assert api_client.get("/api/v1/campaigns", {"status": "bogus"}).status_code == 400

    client.force_login(make_staff(superuser=True))
    page = client.get(reverse("admin:campaigns_campaign_changelist"), {"status__exact": "sent"})
    assert list(page.context["cl"].result_list) == [Campaign.objects.get(pk=sent.pk)]


@pytest.mark.django_db
def test_a_sent_campaign_may_be_cloned_into_its_next_iteration(api_client):
    campaign = _all_out(variants=[("A", 100)])
    response = api_client.post(f"/api/v1/campaigns/{campaign.pk}/clone")
    assert response.status_code == 201 and response.json()["status"] == "draft"


@pytest.mark.django_db
def test_a_sent_campaign_is_cloned_with_the_winner_of_its_live_results_first(api_client, client, make_staff):
    campaign = _all_out(variants=[("A", 50), ("B", 50)])
    assert campaign.winner_id is None
    # No winner yet: its next iteration would not know its control.
    refused = api_client.post(f"/api/v1/campaigns/{campaign.pk}/clone")
    assert refused.status_code == 409
    assert refused.json()["reason"] == "RESULTS_STILL_COUNTING"
    assert "results still counting: no winner yet" in refused.json()["detail"]
    assert Campaign.objects.filter(parent=campaign).count() == 0

    b_users = list(campaign.assignments.filter(variant__name="B").values_list("user_id", flat=True))
    add_events([(u, "order_paid", timezone.now() - dt.timedelta(minutes=30)) for u in b_users[:15]])
    assert selectors.campaign_results(campaign)["winner"] == "B"

    response = api_client.post(f"/api/v1/campaigns/{campaign.pk}/clone")
    assert response.status_code == 201
    assert [v["name"] for v in response.json()["variants"]] == ["B", "A"]

    client.force_login(make_staff(superuser=True))
    client.post(reverse("admin:campaigns_campaign_changelist"), {"action": "clone", "_selected_action": [campaign.pk]})
    clones = Campaign.objects.filter(parent=campaign).order_by("pk")
    assert clones.count() == 2
    assert list(clones.last().variants.order_by("position", "id").values_list("name", flat=True)) == ["B", "A"]
    # Cloning decides nothing for the source: its winner is named when the window closes.
    assert Campaign.objects.get(pk=campaign.pk).winner_id is None


@pytest.mark.django_db
def test_the_close_names_the_whole_windows_winner_over_an_earlier_one():
    campaign = _all_out(variants=[("A", 50), ("B", 50)])
    # A winner named on the conversions up to the last send (the old rule, kept by old rows).
    Campaign.objects.filter(pk=campaign.pk).update(winner=campaign.variants.get(name="A"))
    b_users = list(campaign.assignments.filter(variant__name="B").values_list("user_id", flat=True))
    add_events([(u, "order_paid", timezone.now() - dt.timedelta(minutes=30)) for u in b_users[:15]])
    _window_closed(campaign)

    assert services.close_attribution_windows()["completed"] == 1
    assert Campaign.objects.get(pk=campaign.pk).winner.name == "B"


@pytest.mark.django_db
def test_a_retried_feedback_leaves_the_frozen_results_as_they_were():
    campaign = _all_out(variants=[("A", 50), ("B", 50)])
    _window_closed(campaign)
    services.close_attribution_windows()
    frozen = Campaign.objects.get(pk=campaign.pk).results_snapshot
    users = list(campaign.assignments.values_list("user_id", flat=True))
    add_events([(u, "order_paid", timezone.now()) for u in users[:10]])
    # A retry after a failed tagging (no feedback_applied_at) finds the results already frozen.
    Campaign.objects.filter(pk=campaign.pk).update(feedback_applied_at=None)

    assert services.apply_feedback(campaign_id=campaign.pk) is not None

    campaign.refresh_from_db()
    assert campaign.results_snapshot == frozen and campaign.feedback_applied_at is not None


@pytest.mark.django_db(transaction=True)
def test_two_overlapping_feedback_runs_tag_once():
    import threading

    from django.db import connection, transaction

    campaign = _all_out(variants=[("A", 100)])
    _window_closed(campaign)
    with transaction.atomic():
        services._complete(Campaign.objects.select_for_update().get(pk=campaign.pk))
    second: dict[str, object] = {}

    def run() -> None:
        try:
            second["result"] = services.apply_feedback(campaign_id=campaign.pk)
        finally:
            connection.close()

    with transaction.atomic():
        first = services.apply_feedback(campaign_id=campaign.pk)
        applied_at = Campaign.objects.get(pk=campaign.pk).feedback_applied_at
        other = threading.Thread(target=run)
        other.start()
        # The second run waits on the row lock the first still holds.
        other.join(timeout=1.0)
        assert other.is_alive()
    other.join(timeout=30)

    assert first is not None and second["result"] is None
    assert Campaign.objects.get(pk=campaign.pk).feedback_applied_at == applied_at


@pytest.mark.django_db
def test_a_late_event_inside_the_window_ingested_during_the_grace_period_counts(api_client):
    campaign = _all_out(attribution_hours=24, hours_ago=24.5, variants=[("A", 100)])
    # The window ended 30 minutes ago; the grace period (60 minutes) is still running.
    Campaign.objects.filter(pk=campaign.pk).update(sent_at=timezone.now() - dt.timedelta(hours=24.5))
    assert services.close_attribution_windows()["completed"] == 0
    assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.SENT

    # Ingested now, timestamped an hour ago: inside the window.
    users = list(campaign.assignments.values_list("user_id", flat=True))
    add_events([(u, "order_paid", timezone.now() - dt.timedelta(hours=1)) for u in users[:3]])
    live = api_client.get(f"/api/v1/campaigns/{campaign.pk}/results").json()
    assert live["final"] is False and sum(g["converted"] for g in live["groups"]) == 3

    # The grace period ends.
    Campaign.objects.filter(pk=campaign.pk).update(sent_at=timezone.now() - dt.timedelta(hours=25, minutes=1))
    assert services.close_attribution_windows()["completed"] == 1
    campaign.refresh_from_db()
    assert sum(g["converted"] for g in campaign.results_snapshot["groups"]) == 3

    # After completion the API gives the frozen results, and says so.
    add_events([(u, "order_paid", timezone.now() - dt.timedelta(hours=2)) for u in users[3:6]])
    final = api_client.get(f"/api/v1/campaigns/{campaign.pk}/results").json()
    assert final["final"] is True and sum(g["converted"] for g in final["groups"]) == 3
    assert sum(g["converted"] for g in selectors.campaign_results(campaign)["groups"]) == 6


@pytest.mark.django_db
def test_a_failed_tagging_shows_its_reason_and_is_retried_by_the_next_run(monkeypatch):
    from profiles import services as profile_services

    campaign = _all_out(variants=[("A", 100)])
    _window_closed(campaign)

    def broken(**kwargs):
        raise RuntimeError("tag store unavailable")

    monkeypatch.setattr(profile_services, "tag_profiles", broken)
    report = services.close_attribution_windows()
    assert (report["completed"], report["feedback"], report["failed"]) == (1, 0, 1)
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.COMPLETED and campaign.feedback_applied_at is None
    assert campaign.failure_reason.startswith("Tagging the responders failed") and campaign.failed_at
    assert "tag store unavailable" in campaign.failure_reason
    monkeypatch.undo()

    assert services.close_attribution_windows()["feedback"] == 1
    campaign.refresh_from_db()
    assert campaign.feedback_applied_at is not None and campaign.failure_reason == "" and campaign.failed_at is None


@pytest.mark.django_db(transaction=True)
def test_migrating_sorts_old_completions_into_sent_and_completed():
    old = migrate_to(("campaigns", "0008_alter_campaign_phase"))
    Campaign8, Segment8 = old.get_model("campaigns", "Campaign"), old.get_model("campaigns", "Segment")
    segment = Segment8.objects.create(name="all", definition={"all": []})
    now = timezone.now()

    def made(name: str, **fields):
        return Campaign8.objects.create(name=name, segment=segment, channel="push", attribution_hours=72, **fields)

    recent = made("recent", status="completed", completed_at=now - dt.timedelta(hours=10))
    past = made("past", status="completed", completed_at=now - dt.timedelta(hours=100))
    running = made("running", status="running")
    rolled = made("rolled", status="completed", completed_at=now - dt.timedelta(hours=10), rolled_out_at=now)
    Variant8 = old.get_model("campaigns", "Variant")
    # Winners named at the last send under the old rule.
    for campaign in (recent, past, rolled):
        campaign.winner = Variant8.objects.create(campaign=campaign, name="A", weight=100)
        campaign.save(update_fields=["winner"])
    migrate_to_latest()

    recent, past, running, rolled = (Campaign.objects.get(pk=c.pk) for c in (recent, past, running, rolled))
    assert (recent.status, recent.completed_at) == (CampaignStatus.SENT, None)
    # Back to counting: the close names the winner on the whole window, a rolled-out one stays.
    assert recent.winner_id is None
    assert past.winner is not None and past.winner.name == "A"
    assert rolled.status == CampaignStatus.SENT and rolled.winner is not None
    assert recent.sent_at == now - dt.timedelta(hours=10)
    assert past.status == CampaignStatus.COMPLETED and past.completed_at == now - dt.timedelta(hours=28)
    assert running.status == CampaignStatus.RUNNING and running.sent_at is None
    from django_celery_beat.models import PeriodicTask

    beat = PeriodicTask.objects.get(name=MIGRATION.TASK_NAME)
    assert beat.task == "campaigns.tasks.close_attribution_windows" and beat.enabled


def _wait(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.worker
def test_a_window_that_closes_while_no_worker_runs_is_completed_by_the_next_beat_run(celery_worker):
    campaign = _all_out(attribution_hours=1)
    celery_worker.kill()
    # The window closes while the worker is down: nothing completes the campaign meanwhile.
    _window_closed(campaign, hours_ago=3)
    assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.SENT

    celery_worker.start()
    # What beat publishes at its next tick.
    tasks.close_attribution_windows.delay()

    _wait(lambda: Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.COMPLETED, what="completion")
    assert Campaign.objects.get(pk=campaign.pk).completed_at is not None
