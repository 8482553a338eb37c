"""The health report (admin page and `manage.py opsloop_health`): queue depths read from the real
Redis, failed and stuck work of every domain, the last run of each beat task, and the exit code."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from campaigns.models import Campaign, Delivery
from config.celery import app
from coupons.models import CodeBatch, IssuanceJob
from crm.models import RecomputeRun
from indicators.models import Anomaly, AnomalyCheckRun
from monitoring import selectors
from monitoring.models import TaskRun
from profiles.models import TagRule
from tests.factories.campaigns import CampaignFactory, make_profiles
from tests.factories.coupons import CouponRuleFactory
from tests.factories.profiles import TagRuleFactory

pytestmark = pytest.mark.django_db


def run_health(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("opsloop_health", *args, stdout=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue()
    return 0, out.getvalue()


def section(report: selectors.HealthReport, title: str) -> selectors.Section:
    return next(s for s in report.sections if s.title == title)


@pytest.fixture
def broker_db(settings):
    """The report reads a Redis database of its own, filled by a real Celery producer."""
    url = settings.REDIS_URL.rsplit("/", 1)[0] + "/17"
    client = redis.Redis.from_url(url)
    client.flushdb()
    settings.CELERY_BROKER_URL = url
    yield url
    client.flushdb()


def test_queue_depths_count_every_priority_of_each_queue(broker_db):
    with app.connection_for_write(broker_db) as connection:
        for priority in (None, 0, 6, 9):
            app.send_task("config.celery.ping", queue="analytics", priority=priority, connection=connection)
        for _ in range(2):
            app.send_task("config.celery.ping", queue="deliveries", connection=connection)
    queues, in_flight, error = selectors.queue_depths()
    assert {q.name: q.waiting for q in queues} == {"default": 0, "deliveries": 2, "analytics": 4}
    assert (in_flight, error) == (0, "")
    # Priority messages really are kept apart: a plain LLEN of the queue sees fewer.
    assert redis.Redis.from_url(broker_db).llen("analytics") < 4


def test_an_unreachable_redis_is_a_problem_not_a_crash(settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    report = selectors.health_report()
    assert report.queues_error.startswith("ConnectionError")
    assert any(p.startswith("queues unreadable") for p in report.problems)


def test_a_healthy_system_exits_0_and_says_so(broker_db):
    code, text = run_health()
    assert code == 0
    assert "Problems: none" in text and "analytics    0" in text


def failures_everywhere() -> dict[str, object]:
    now = timezone.now()
    failed = CampaignFactory(name="Spring push")
    fields = {"status": "failed"}
    fields["failure_reason"] = "GatewayDown: push gateway refused"
    Campaign.objects.filter(pk=failed.pk).update(**fields)
    stuck = CampaignFactory(name="Never started")
    Campaign.objects.filter(pk=stuck.pk).update(status="running", phase="", launched_at=now - timedelta(minutes=11))
    recent = CampaignFactory(name="Just launched")
    Campaign.objects.filter(pk=recent.pk).update(status="running", phase="", launched_at=now - timedelta(minutes=2))
    sending = CampaignFactory(name="Half sent")
    Campaign.objects.filter(pk=sending.pk).update(status="running", phase="full", launched_at=now)
    variant = sending.variants.first()
    people = make_profiles(3, prefix="stuck")
    stale = now - timedelta(seconds=settings.OPSLOOP_DELIVERY_STALE_SECONDS + 60)
    for person, claimed in zip(people, (stale, stale, now), strict=True):
        Delivery.objects.create(
            campaign=sending,
            variant=variant,
            profile=person,
            user_id=person.user_id,
            channel="push",
            phase="full",
            status="sending",
            claimed_at=claimed,
        )
    rule = CouponRuleFactory()
    job = IssuanceJob.objects.create(rule=rule, status="failed", error="RuntimeError: boom", finished_at=now)
    IssuanceJob.objects.create(rule=rule, status="running")
    batch = CodeBatch.objects.create(rule=rule, quantity=5, status="failed", error="OSError: disk full")
    lost_batch = CodeBatch.objects.create(rule=rule, quantity=5, created_at=now - timedelta(minutes=31))
    CodeBatch.objects.create(rule=rule, quantity=5, created_at=now - timedelta(minutes=1))  # being generated
    old_failure = RecomputeRun.objects.create(status="failed", error="old", requested_at=now - timedelta(days=2))
    old_lost = now - timedelta(days=2, hours=1)
    RecomputeRun.objects.create(status="running", requested_at=old_lost, started_at=old_lost)  # superseded
    RecomputeRun.objects.create(status="done", requested_at=now - timedelta(days=1))
    run = RecomputeRun.objects.create(status="failed", error="NoActiveScheme: none", requested_at=now)
    lost = RecomputeRun.objects.create(
        status="running", requested_at=now - timedelta(hours=5), started_at=now - timedelta(hours=5)
    )
    tag_rule = TagRuleFactory(tag_name="broken-tag")
    TagRule.objects.filter(pk=tag_rule.pk).update(last_status="failed", last_error="RuleNotRunnable: bad")
    check = AnomalyCheckRun.objects.create(
        kind="daily", period_start=now, status="failed", error="RuntimeError: coupon spend unreadable"
    )
    AnomalyCheckRun.objects.create(kind="hourly", period_start=now, status="done")
    alert = Anomaly.objects.create(
        indicator="revenue",
        granularity="daily",
        period_start=now,
        value=9,
        expected=5,
        low=4,
        high=6,
        score=6,
        direction="spike",
        email_status="sent",
        webhook_status="failed",
        notify_error="webhook: HTTPError: 500",
    )
    return {
        "check": check,
        "alert": alert,
        "failed": failed,
        "stuck": stuck,
        "sending": sending,
        "job": job,
        "batch": batch,
        "lost_batch": lost_batch,
        "run": run,
        "old_failure": old_failure,
        "lost": lost,
        "tag_rule": tag_rule,
    }


def test_the_report_lists_what_failed_or_is_stuck_in_every_domain(broker_db):
    made = failures_everywhere()
    report = selectors.health_report()
    failed = section(report, "failed campaign(s)")
    assert [i.id for i in failed.items] == [made["failed"].pk]
    assert failed.items[0].reason == "GatewayDown: push gateway refused"
    assert [i.id for i in section(report, "campaign(s) running without a phase").items] == [made["stuck"].pk]
    stuck_sends = section(report, "campaign(s) with deliveries stuck in sending").items
    assert [(i.id, i.reason.split()[0]) for i in stuck_sends] == [(made["sending"].pk, "2")]
    assert [i.id for i in section(report, "failed issuance job(s)").items] == [made["job"].pk]
    assert section(report, "failed issuance job(s)").items[0].reason == "RuntimeError: boom"
    assert [i.id for i in section(report, "failed code batch(es)").items] == [made["batch"].pk]
    assert [i.id for i in section(report, "code batch(es) pending for too long").items] == [made["lost_batch"].pk]
    # Only failed and lost runs since the last good recompute count.
    assert [i.id for i in section(report, "failed value recompute run(s)").items] == [made["run"].pk]
    assert [i.id for i in section(report, "value recompute run(s) queued or running for too long").items] == [
        made["lost"].pk
    ]
    assert [i.id for i in section(report, "tag rule(s) whose last recompute failed").items] == [made["tag_rule"].pk]
    assert [i.id for i in section(report, "failed anomaly check run(s)").items] == [made["check"].pk]
    alerts = section(report, "anomaly alert(s) whose e-mail or webhook failed").items
    assert [(i.id, i.reason) for i in alerts] == [(made["alert"].pk, "webhook: HTTPError: 500")]
    assert len(report.problems) == 11


def test_the_command_prints_the_problems_and_exits_1(broker_db):
    made = failures_everywhere()
    code, text = run_health()
    assert code == 1
    assert f"issuance job #{made['job'].pk}" in text and "RuntimeError: boom" in text
    assert "1 failed code batch(es)" in text and "OSError: disk full" in text
    assert "1 failed anomaly check run(s)" in text and "RuntimeError: coupon spend unreadable" in text
    code, text = run_health("--json")
    data = json.loads(text)
    assert code == 1 and data["healthy"] is False and len(data["problems"]) == 11
    assert data["queues"] == {"default": 0, "deliveries": 0, "analytics": 0}


def test_beat_tasks_show_their_last_run_and_the_recorded_outcome(broker_db):
    PeriodicTask.objects.all().delete()
    crontab = CrontabSchedule.objects.create(minute="*/5")
    ran_at = timezone.now() - timedelta(minutes=3)
    PeriodicTask.objects.create(name="expire", task="coupons.tasks.expire_coupons", crontab=crontab, last_run_at=ran_at)
    PeriodicTask.objects.create(name="tags", task="profiles.tasks.recompute_tag_rules", crontab=crontab)
    PeriodicTask.objects.create(name="never", task="indicators.tasks.rollup_indicators", crontab=crontab)
    TaskRun.objects.create(task="coupons.tasks.expire_coupons", state="ok", finished_at=ran_at, runtime_seconds=0.25)
    TaskRun.objects.create(task="profiles.tasks.recompute_tag_rules", state="failed", error="OperationalError: gone")
    TaskRun.objects.create(task="coupons.tasks.run_issuance_job", state="failed", error="RuntimeError: x")
    report = selectors.health_report()
    beat = {b.name: b for b in report.beat}
    assert (beat["expire"].last_run_at, beat["expire"].outcome, beat["expire"].runtime_seconds) == (ran_at, "ok", 0.25)
    assert (beat["tags"].outcome, beat["tags"].error) == ("failed", "OperationalError: gone")
    assert (beat["never"].last_run_at, beat["never"].outcome) == (None, "")
    assert report.problems == ["beat task 'tags' failed: OperationalError: gone"]
    assert [t.task for t in report.failed_tasks] == ["coupons.tasks.run_issuance_job"]
    code, text = run_health()
    assert code == 1 and "tags: sent -; finished -, failed: OperationalError: gone" in text
    assert f"expire: sent {ran_at:%Y-%m-%d %H:%M:%S}; finished {ran_at:%Y-%m-%d %H:%M:%S}, ok in 0.2 s" in text


@pytest.mark.parametrize("role", ["Analyst", "Operations"])
def test_analysts_and_operations_see_the_health_page(client, make_staff, role, broker_db):
    made = failures_everywhere()
    client.force_login(make_staff(role))
    page = client.get(reverse("admin:monitoring_health_changelist"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "RuntimeError: boom" in html and 'id="health-queues"' in html and "Never started" in html
    assert reverse("admin:coupons_issuancejob_change", args=[made["job"].pk]) in html
    assert "monitoring/health/" in client.get(reverse("admin:index")).content.decode()


def test_customer_service_does_not_see_the_health_page(client, make_staff):
    client.force_login(make_staff("Customer service"))
    assert client.get(reverse("admin:monitoring_health_changelist")).status_code == 403


def test_the_report_reads_a_fixed_number_of_queries_however_much_failed(broker_db, django_assert_max_num_queries):
    failures_everywhere()
    for i in range(5):
        IssuanceJob.objects.create(rule=CouponRuleFactory(), status="failed", error=f"RuntimeError: {i}")
        CodeBatch.objects.create(rule=CouponRuleFactory(), quantity=1, status="failed", error="x")
    with django_assert_max_num_queries(24):  # one per section and the beat and task-run reads: none per failure
        report = selectors.health_report()
        report.as_dict()
    assert section(report, "failed issuance job(s)").count == 6


def test_messages_of_unknown_outcome_are_listed_for_review_and_make_it_a_problem(broker_db):
    make_profiles(3)
    campaign = CampaignFactory(status="running", holdout_percent=0)
    from campaigns import services

    services.start_send(campaign_id=campaign.pk)
    Delivery.objects.filter(campaign=campaign).update(status="unknown", claimed_at=timezone.now())
    report = selectors.health_report()
    unknown = section(report, "campaign(s) with messages of unknown outcome to review")
    assert unknown.count == 1 and unknown.items[0].id == campaign.pk
    assert "3 message(s) of unknown outcome" in unknown.items[0].reason
    code, text = run_health()
    assert code == 1 and "messages of unknown outcome" in text


def test_a_campaign_whose_attribution_window_did_not_close_cleanly_is_a_problem(broker_db):
    now = timezone.now()
    grace = timedelta(minutes=settings.OPSLOOP_ATTRIBUTION_GRACE_MINUTES)

    def sent(name: str, closed_ago: timedelta, **fields) -> Campaign:
        campaign = CampaignFactory(name=name, attribution_hours=24)
        Campaign.objects.filter(pk=campaign.pk).update(
            status="sent", sent_at=now - timedelta(hours=24) - grace - closed_ago, **fields
        )
        return campaign

    counting = sent("Still counting", -timedelta(hours=3))
    just_closed = sent("Due now", timedelta(minutes=5))
    overdue = sent("Overdue", timedelta(hours=2))
    failed_close = sent(
        "Close failed", -timedelta(hours=3), failure_reason="Closing the attribution window failed: boom"
    )
    untagged = CampaignFactory(name="Untagged")
    Campaign.objects.filter(pk=untagged.pk).update(
        status="completed",
        completed_at=now,
        failed_at=now,
        failure_reason="Tagging the responders failed (tried again by the next run): RuntimeError: tags",
    )
    tagged = CampaignFactory(name="Tagged")
    Campaign.objects.filter(pk=tagged.pk).update(status="completed", completed_at=now, feedback_applied_at=now)

    listed = section(selectors.health_report(), "campaign(s) whose attribution window did not close cleanly")

    reasons = {item.id: item.reason for item in listed.items}
    assert set(reasons) == {overdue.pk, failed_close.pk, untagged.pk}
    assert counting.pk not in reasons and just_closed.pk not in reasons and tagged.pk not in reasons
    assert "still sent, not completed" in reasons[overdue.pk]
    assert reasons[failed_close.pk] == "Closing the attribution window failed: boom"
    assert "RuntimeError: tags" in reasons[untagged.pk]
    code, text = run_health()
    assert code == 1 and "Overdue" in text and "RuntimeError: tags" in text
