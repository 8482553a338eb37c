"""Reads of the health report: queue depths in Redis, failed and stuck work of every domain, and
the last run of each scheduled task. The admin page and `manage.py opsloop_health` show it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db.models import Count, Exists, Min, OuterRef, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext
from django_celery_beat.models import PeriodicTask
from kombu.transport.redis import PRIORITY_STEPS, Channel

from campaigns import selectors as campaign_selectors
from campaigns.models import Campaign, Delivery
from community.models import ScoreRun
from config import formatting
from config.replica import replica_state
from coupons.models import CodeBatch, IssuanceJob, OrderRefund
from crm.models import RecomputeRun
from indicators.models import Anomaly, AnomalyCheckRun
from journeys.models import JourneyRun
from journeys.models import RunStatus as JourneyRunStatus
from monitoring.models import TaskRun
from predictions.models import PredictionRun, RunStatus
from profiles.models import TagRule


def _queue_names() -> list[str]:
    """The queues the Celery app declares (settings): default, deliveries, analytics."""
    return [queue.name for queue in settings.CELERY_TASK_QUEUES]


# Most rows a section lists; its count is always the whole number.
LIST_LIMIT = 50


@dataclass
class Queue:
    name: str
    waiting: int


@dataclass
class Item:
    """One failed or stuck object: what it is, its id, why, since when, and its admin page."""

    kind: str
    id: int
    name: str
    reason: str
    since: datetime | None
    admin_url: str = ""


@dataclass
class Section:
    title: str
    count: int = 0
    items: list[Item] = field(default_factory=list)


@dataclass
class BeatTask:
    name: str
    task: str
    enabled: bool
    schedule: str
    last_run_at: datetime | None
    outcome: str  # ok, failed, retry, or "" when no run was recorded
    finished_at: datetime | None
    runtime_seconds: float | None
    error: str

    @property
    def outcome_label(self) -> str:
        """The outcome as the health page names it, in the reader's language."""
        return str(dict(TaskRun.State.choices).get(self.outcome, self.outcome))


@dataclass
class Replica:
    """The PostgreSQL replica dashboards read from (config/replica.py), when one is configured."""

    usable: bool
    lag_bytes: float | None  # WAL the replica has yet to replay
    reason: str  # why the dashboards read the primary instead; "" when they read the replica

    @property
    def lag_mb(self) -> str:
        """The lag in MB of 10^6 bytes, the unit of OPSLOOP_REPLICA_MAX_LAG_MB; "-" when unknown."""
        return "-" if self.lag_bytes is None else f"{self.lag_bytes / 1e6:.3f} MB"


@dataclass
class HealthReport:
    checked_at: datetime
    queues: list[Queue]
    queues_error: str
    in_flight: int | None
    sections: list[Section]
    beat: list[BeatTask]
    failed_tasks: list[TaskRun]
    replica: Replica | None = None

    @property
    def problems(self) -> list[str]:
        """One line per thing an operator must look at; empty when all is well."""
        lines = [f"{s.count} {s.title}" for s in self.sections if s.count]
        lines += [
            gettext("beat task '%(name)s' failed: %(error)s") % {"name": b.name, "error": b.error}
            for b in self.beat
            if b.enabled and b.outcome == "failed"
        ]
        if self.queues_error:
            lines.append(gettext("queues unreadable: %(error)s") % {"error": self.queues_error})
        if self.replica and not self.replica.usable:
            lines.append(
                gettext("replica not used, dashboards read the primary: %(reason)s") % {"reason": self.replica.reason}
            )
        return lines

    def as_dict(self) -> dict[str, Any]:
        def when(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "checked_at": when(self.checked_at),
            "healthy": not self.problems,
            "problems": self.problems,
            "queues": {q.name: q.waiting for q in self.queues},
            "queues_error": self.queues_error,
            "in_flight": self.in_flight,
            "sections": [
                {
                    "title": s.title,
                    "count": s.count,
                    "items": [{**asdict(i), "since": when(i.since)} for i in s.items],
                }
                for s in self.sections
            ],
            "beat": [
                {**asdict(b), "last_run_at": when(b.last_run_at), "finished_at": when(b.finished_at)} for b in self.beat
            ],
            "failed_tasks": [
                {"task": t.task, "finished_at": when(t.finished_at), "error": t.error} for t in self.failed_tasks
            ],
            "replica": asdict(self.replica) if self.replica else None,
        }


def _key_prefix() -> str:
    """The transport's `global_keyprefix` (the tests keep their queues under one), put before
    every key kombu writes."""
    return (getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}).get("global_keyprefix", "")


def _queue_keys(name: str) -> list[str]:
    """Kombu's Redis transport keeps a queue as a list named after it, and each message priority
    other than 0 as a list of its own, `<queue>\\x06\\x16<priority>`."""
    prefix = _key_prefix()
    return [prefix + (name if not pri else f"{name}{Channel.sep}{pri}") for pri in PRIORITY_STEPS]


def queue_depths() -> tuple[list[Queue], int | None, str]:
    """Messages waiting per queue, messages taken by workers and not yet acknowledged, and an
    error text when Redis does not answer."""
    names = _queue_names()
    try:
        client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2)
        with client.pipeline(transaction=False) as pipe:
            for name in names:
                for key in _queue_keys(name):
                    pipe.llen(key)
            pipe.hlen(_key_prefix() + Channel.unacked_key)
            counts = pipe.execute()
    except redis.RedisError as exc:
        return [Queue(name, 0) for name in names], None, f"{exc.__class__.__name__}: {exc}"
    steps = len(PRIORITY_STEPS)
    queues = [Queue(name, sum(counts[i * steps : (i + 1) * steps])) for i, name in enumerate(names)]
    return queues, counts[-1], ""


def _admin_url(model, pk: int) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[pk])


def _section(title: str, queryset, make) -> Section:
    rows = list(queryset[:LIST_LIMIT])
    count = len(rows) if len(rows) < LIST_LIMIT else queryset.count()
    return Section(title=title, count=count, items=[make(row) for row in rows])


def failed_campaigns() -> Section:
    return _section(
        gettext("failed campaign(s)"),
        Campaign.objects.filter(status="failed").order_by("-updated_at"),
        lambda c: Item(
            gettext("campaign"),
            c.pk,
            c.name,
            c.failure_reason or gettext("failed"),
            c.failed_at or c.updated_at,
            _admin_url(Campaign, c.pk),
        ),
    )


def campaigns_stuck_at_start(*, now: datetime) -> Section:
    """Running without a phase: the start (audience snapshot, first deliveries) never happened."""
    cutoff = now - timedelta(minutes=settings.OPSLOOP_HEALTH_CAMPAIGN_START_MINUTES)
    started_long_ago = Q(launched_at__lt=cutoff) | Q(launched_at__isnull=True, updated_at__lt=cutoff)
    return _section(
        gettext("campaign(s) running without a phase"),
        Campaign.objects.filter(started_long_ago, status="running", phase="").order_by("launched_at"),
        lambda c: Item(
            gettext("campaign"),
            c.pk,
            c.name,
            gettext("running with no phase for over %(minutes)s minutes")
            % {"minutes": settings.OPSLOOP_HEALTH_CAMPAIGN_START_MINUTES},
            c.launched_at or c.updated_at,
            _admin_url(Campaign, c.pk),
        ),
    )


def campaigns_not_closed(*, now: datetime) -> Section:
    """Sent campaigns whose close failed (the reason) or is overdue (window and grace ended over
    OPSLOOP_HEALTH_ATTRIBUTION_CLOSE_MINUTES ago), and completed ones whose responders' tagging
    failed or never ran: each is retried by the next run of `close_attribution_windows`."""
    minutes = settings.OPSLOOP_HEALTH_ATTRIBUTION_CLOSE_MINUTES
    not_closed = Q(status="sent") & (~Q(failure_reason="") | campaign_selectors.closed_for_more_than(minutes))
    untagged = Q(status="completed", feedback_applied_at__isnull=True) & (
        ~Q(failure_reason="") | Q(completed_at__lt=now - timedelta(minutes=minutes))
    )

    def reason(c: Campaign) -> str:
        if c.failure_reason:
            return c.failure_reason
        if c.status == "sent":
            return gettext("attribution window closed at %(when)s; still sent, not completed") % {
                "when": formatting.local_time(campaign_selectors.attribution_closes_at(c))
            }
        return gettext("completed, but its responders were never tagged")

    return _section(
        gettext("campaign(s) whose attribution window did not close cleanly"),
        Campaign.objects.filter(not_closed | untagged).order_by("sent_at", "pk"),
        lambda c: Item(
            gettext("campaign"),
            c.pk,
            c.name,
            reason(c),
            c.failed_at or campaign_selectors.attribution_closes_at(c),
            _admin_url(Campaign, c.pk),
        ),
    )


def _campaigns_by_deliveries(title: str, deliveries, reason: str) -> Section:
    """One row per campaign with such deliveries: how many, since when (`reason` takes `{n}`)."""
    grouped = (
        deliveries.values("campaign_id", "campaign__name")
        .annotate(n=Count("*"), oldest=Min("claimed_at"))
        .order_by("oldest")
    )
    rows = list(grouped[:LIST_LIMIT])
    return Section(
        title=title,
        count=len(rows) if len(rows) < LIST_LIMIT else grouped.count(),
        items=[
            Item(
                gettext("campaign"),
                r["campaign_id"],
                r["campaign__name"],
                reason.format(n=r["n"]),
                r["oldest"],
                _admin_url(Campaign, r["campaign_id"]),
            )
            for r in rows
        ],
    )


def campaigns_with_stuck_deliveries(*, now: datetime) -> Section:
    """Deliveries claimed by a worker (`sending`) whose lease has not been renewed for longer than
    the sweeper allows: the worker died and the sweeper has not put them back (or is not running)."""
    cutoff = now - timedelta(seconds=settings.OPSLOOP_DELIVERY_STALE_SECONDS)
    return _campaigns_by_deliveries(
        gettext("campaign(s) with deliveries stuck in sending"),
        Delivery.objects.filter(status="sending", claimed_at__lt=cutoff),
        gettext("{n} deliveries in sending for over %(seconds)s s")
        % {"seconds": settings.OPSLOOP_DELIVERY_STALE_SECONDS},
    )


def campaigns_with_unknown_outcomes() -> Section:
    """Messages whose worker died while posting them on an at-most-once channel: an operator asks
    the provider and settles them in the deliveries list."""
    return _campaigns_by_deliveries(
        gettext("campaign(s) with messages of unknown outcome to review"),
        Delivery.objects.filter(status="unknown"),
        gettext("{n} message(s) of unknown outcome (Deliveries, status 'Outcome unknown')"),
    )


def failed_issuance_jobs() -> Section:
    return _section(
        gettext("failed issuance job(s)"),
        IssuanceJob.objects.filter(status=IssuanceJob.Status.FAILED).select_related("rule").order_by("-finished_at"),
        lambda j: Item(gettext("issuance job"), j.pk, str(j), j.error, j.finished_at, _admin_url(IssuanceJob, j.pk)),
    )


def failed_code_batches() -> Section:
    return _section(
        gettext("failed code batch(es)"),
        CodeBatch.objects.filter(status=CodeBatch.Status.FAILED).select_related("rule").order_by("-id"),
        lambda b: Item(gettext("code batch"), b.pk, str(b), b.error, b.finished_at, _admin_url(CodeBatch, b.pk)),
    )


def pending_code_batches(*, now: datetime) -> Section:
    """A batch is generated within seconds of its order; one still pending long after lost its
    task message (the broker was flushed, say): a retry cannot help it, ordering it again can."""
    minutes = settings.OPSLOOP_HEALTH_BATCH_PENDING_MINUTES
    return _section(
        gettext("code batch(es) pending for too long"),
        CodeBatch.objects.filter(status=CodeBatch.Status.PENDING, created_at__lt=now - timedelta(minutes=minutes))
        .select_related("rule")
        .order_by("created_at"),
        lambda b: Item(
            gettext("code batch"),
            b.pk,
            str(b),
            gettext("pending for over %(minutes)s minutes") % {"minutes": minutes},
            b.created_at,
            _admin_url(CodeBatch, b.pk),
        ),
    )


def failed_order_refunds() -> Section:
    """Refunds whose last attempt failed. The beat tries each again with back-off, so one listed
    here for long has a cause that needs mending (its reason says which)."""
    return _section(
        gettext("failed order refund(s)"),
        OrderRefund.objects.filter(status=OrderRefund.Status.FAILED).order_by("-failed_at", "-id"),
        lambda r: Item(gettext("order refund"), r.pk, str(r), r.error, r.failed_at, _admin_url(OrderRefund, r.pk)),
    )


# The beat applies a refund whose task was lost after a minute; one pending far longer than that
# means neither the task nor the beat's sweep runs (no worker, or beat stopped).
REFUND_PENDING_MINUTES = 10


def pending_order_refunds(*, now: datetime) -> Section:
    return _section(
        gettext("order refund(s) pending for too long"),
        OrderRefund.objects.filter(
            status=OrderRefund.Status.PENDING, created_at__lt=now - timedelta(minutes=REFUND_PENDING_MINUTES)
        ).order_by("created_at", "id"),
        lambda r: Item(
            gettext("order refund"),
            r.pk,
            str(r),
            gettext("pending for over %(minutes)s minutes") % {"minutes": REFUND_PENDING_MINUTES},
            r.created_at,
            _admin_url(OrderRefund, r.pk),
        ),
    )


def _since_last_good_recompute(queryset):
    """Runs after the last one that succeeded: a later good run recomputed everything, so older
    failed or lost runs need nothing more (and would otherwise be reported for ever)."""
    last_done = RecomputeRun.objects.filter(status=RecomputeRun.Status.DONE).order_by("-requested_at").first()
    return queryset if last_done is None else queryset.filter(requested_at__gt=last_done.requested_at)


def failed_recompute_runs() -> Section:
    failed = _since_last_good_recompute(RecomputeRun.objects.filter(status=RecomputeRun.Status.FAILED))
    return _section(
        gettext("failed value recompute run(s)"),
        failed.order_by("-requested_at"),
        lambda r: Item(
            gettext("value recompute"), r.pk, str(r), r.error, r.finished_at, _admin_url(RecomputeRun, r.pk)
        ),
    )


def failed_prediction_runs() -> Section:
    """Failed prediction runs since the last one that succeeded (which predicted everything again)."""
    last_done = PredictionRun.objects.filter(status=RunStatus.DONE).order_by("-requested_at").first()
    failed = PredictionRun.objects.filter(status=RunStatus.FAILED)
    if last_done is not None:
        failed = failed.filter(requested_at__gt=last_done.requested_at)
    return _section(
        gettext("failed prediction run(s)"),
        failed.order_by("-requested_at"),
        lambda r: Item(
            gettext("prediction run"), r.pk, str(r), r.error, r.finished_at, _admin_url(PredictionRun, r.pk)
        ),
    )


def stuck_recompute_runs(*, now: datetime) -> Section:
    """Queued or running for longer than any recompute takes: the worker running it was lost."""
    minutes = settings.OPSLOOP_HEALTH_RECOMPUTE_STUCK_MINUTES
    cutoff = now - timedelta(minutes=minutes)
    stuck = _since_last_good_recompute(
        RecomputeRun.objects.filter(
            Q(status=RecomputeRun.Status.QUEUED, requested_at__lt=cutoff)
            | Q(status=RecomputeRun.Status.RUNNING, started_at__lt=cutoff)
        )
    )
    return _section(
        gettext("value recompute run(s) queued or running for too long"),
        stuck.order_by("requested_at"),
        lambda r: Item(
            gettext("value recompute"),
            r.pk,
            str(r),
            gettext("%(status)s for over %(minutes)s minutes") % {"status": r.get_status_display(), "minutes": minutes},
            r.started_at or r.requested_at,
            _admin_url(RecomputeRun, r.pk),
        ),
    )


def failed_score_runs() -> Section:
    """Contribution score runs that failed, unless a later run of the same month succeeded."""
    later_done = ScoreRun.objects.filter(
        month=OuterRef("month"), status=ScoreRun.Status.DONE, requested_at__gt=OuterRef("requested_at")
    )
    failed = ScoreRun.objects.filter(status=ScoreRun.Status.FAILED).exclude(Exists(later_done))
    return _section(
        gettext("failed contribution score run(s)"),
        failed.order_by("-requested_at"),
        lambda r: Item(
            gettext("contribution scores"), r.pk, str(r), r.error, r.finished_at, _admin_url(ScoreRun, r.pk)
        ),
    )


def failed_tag_rules() -> Section:
    return _section(
        gettext("tag rule(s) whose last recompute failed"),
        TagRule.objects.filter(last_status="failed").order_by("-last_run_at"),
        lambda t: Item(gettext("tag rule"), t.pk, t.name, t.last_error, t.last_run_at, _admin_url(TagRule, t.pk)),
    )


def failed_anomaly_checks() -> Section:
    return _section(
        gettext("failed anomaly check run(s)"),
        AnomalyCheckRun.objects.filter(status=AnomalyCheckRun.Status.FAILED).order_by("-period_start"),
        lambda r: Item(
            gettext("anomaly check"), r.pk, str(r), r.error, r.finished_at, _admin_url(AnomalyCheckRun, r.pk)
        ),
    )


def journeys_with_failing_runs() -> Section:
    """Journeys with runs whose last advance failed: how many, and the newest reason."""
    failing = JourneyRun.objects.filter(status=JourneyRunStatus.ACTIVE).exclude(last_error="")
    newest = failing.filter(campaign=OuterRef("pk")).order_by("-failed_at", "-id")
    journeys = (
        Campaign.objects.filter(Exists(failing.filter(campaign=OuterRef("pk"))))
        .annotate(
            failing_runs=Count(
                "journey_runs",
                filter=Q(journey_runs__status=JourneyRunStatus.ACTIVE) & ~Q(journey_runs__last_error=""),
            ),
            newest_error=newest.values("last_error")[:1],
            newest_failure=newest.values("failed_at")[:1],
        )
        .order_by("-newest_failure")
    )
    return _section(
        gettext("journey(s) with runs that fail to advance"),
        journeys,
        lambda c: Item(
            gettext("journey"),
            c.pk,
            c.name,
            gettext("%(runs)s run(s) failing; the newest: %(reason)s")
            % {"runs": formatting.count(c.failing_runs), "reason": c.newest_error},
            c.newest_failure,
            reverse("admin:journeys_journey_steps", args=[c.pk]),
        ),
    )


def alerts_not_sent() -> Section:
    return _section(
        gettext("anomaly alert(s) whose e-mail or webhook failed"),
        Anomaly.objects.filter(Q(email_status="failed") | Q(webhook_status="failed")).order_by("-period_start"),
        lambda a: Item(gettext("anomaly alert"), a.pk, str(a), a.notify_error, a.created_at, _admin_url(Anomaly, a.pk)),
    )


def beat_tasks() -> list[BeatTask]:
    """Every scheduled task with beat's last run time and the outcome the worker recorded."""
    periodic = list(PeriodicTask.objects.select_related("interval", "crontab", "solar", "clocked").order_by("name"))
    runs = {r.task: r for r in TaskRun.objects.filter(task__in={p.task for p in periodic})}
    tasks = []
    for p in periodic:
        run = runs.get(p.task)
        tasks.append(
            BeatTask(
                name=p.name,
                task=p.task,
                enabled=p.enabled,
                schedule=str(p.scheduler or ""),
                last_run_at=p.last_run_at,
                outcome=run.state if run else "",
                finished_at=run.finished_at if run else None,
                runtime_seconds=run.runtime_seconds if run else None,
                error=run.error if run else "",
            )
        )
    return tasks


def replica() -> Replica | None:
    """The replica's state, checked now (a connect timeout at most when it is down)."""
    state = replica_state(fresh=True)
    if not state.configured:
        return None
    return Replica(usable=state.usable, lag_bytes=state.lag_bytes, reason=state.reason)


def health_report(*, now: datetime | None = None) -> HealthReport:
    now = now or timezone.now()
    queues, in_flight, queues_error = queue_depths()
    beat = beat_tasks()
    scheduled = {b.task for b in beat}
    return HealthReport(
        checked_at=now,
        queues=queues,
        queues_error=queues_error,
        in_flight=in_flight,
        sections=[
            failed_campaigns(),
            campaigns_stuck_at_start(now=now),
            campaigns_with_stuck_deliveries(now=now),
            campaigns_with_unknown_outcomes(),
            campaigns_not_closed(now=now),
            failed_issuance_jobs(),
            failed_code_batches(),
            pending_code_batches(now=now),
            failed_order_refunds(),
            pending_order_refunds(now=now),
            failed_recompute_runs(),
            stuck_recompute_runs(now=now),
            failed_prediction_runs(),
            failed_tag_rules(),
            failed_score_runs(),
            failed_anomaly_checks(),
            alerts_not_sent(),
            journeys_with_failing_runs(),
        ],
        beat=beat,
        # Tasks queued by the app (not beat) whose last run failed, for the page; their objects
        # are in the sections above when they keep a state.
        failed_tasks=list(TaskRun.objects.filter(state=TaskRun.State.FAILED).exclude(task__in=scheduled)),
        replica=replica(),
    )
