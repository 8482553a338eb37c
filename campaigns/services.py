"""Writes of the campaigns app: one function per operator or system action.

The flow of a one-off campaign: `launch_campaign` -> (task) `start_send` snapshots the audience
into assignments and creates the first phase's deliveries -> (tasks) `deliver` sends them in
batches -> `sweep` (beat, every minute) re-queues lost or deferred work, rolls a finished pilot
out when allowed and completes campaigns -> `apply_feedback` tags recipients once the
attribution window has closed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import zoneinfo
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import requests
from django.apps import apps
from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from access.services import record_audit
from campaigns import channels, errors
from campaigns.models import (
    Assignment,
    AssignmentRole,
    Campaign,
    CampaignPhase,
    CampaignStatus,
    ChannelKind,
    Delivery,
    DeliveryStatus,
    ScheduleKind,
    Segment,
    Variant,
)
from campaigns.segments import audience_sql, compile_definition
from config.errors import DomainError
from profiles.models import Profile, TagChange, TagChangeAction

logger = logging.getLogger(__name__)

SENDABLE = (CampaignStatus.RUNNING, CampaignStatus.AWAITING_ROLLOUT)


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def batch_size() -> int:
    return int(_setting("OPSLOOP_DELIVERY_BATCH_SIZE", 200))


# --- segments ----------------------------------------------------------------------------------


@transaction.atomic
def create_segment(*, name: str, definition: Any, description: str = "", actor: Any = None) -> Segment:
    """Store a segment after compiling its definition (DefinitionError names what is wrong)."""
    compile_definition(definition)
    segment = Segment.objects.create(name=name, definition=definition, description=description)
    record_audit(action="campaigns.create_segment", obj=segment, actor=actor, details={"name": name})
    return segment


# --- campaigns ---------------------------------------------------------------------------------


def coupon_rule_exists(rule_id: int) -> bool:
    try:
        model = apps.get_model("coupons", "CouponRule")
    except LookupError:
        return False
    return model.objects.filter(pk=rule_id).exists()


@transaction.atomic
def create_campaign(
    *,
    name: str,
    segment: Segment,
    channel: str,
    variants: Sequence[dict[str, Any]],
    goal_event: str = "order_paid",
    attribution_hours: int = 72,
    holdout_percent: Decimal = Decimal(10),
    pilot_percent: Decimal = Decimal(0),
    auto_rollout: bool = False,
    alpha: float = 0.05,
    min_sample: int = 100,
    schedule: dict[str, Any] | None = None,
    frequency_cap_per_day: int = 1,
    respect_quiet_hours: bool = True,
    quiet_start_hour: int = 21,
    quiet_end_hour: int = 8,
    parent: Campaign | None = None,
    actor: Any = None,
    api_key: Any = None,
) -> Campaign:
    """A draft campaign with its variants (the first is the control among them)."""
    schedule = schedule or {}
    kind = ScheduleKind.NOW
    if "at" in schedule:
        kind = ScheduleKind.AT
    elif "cron" in schedule:
        kind = ScheduleKind.CRON
    elif "trigger_event" in schedule or "trigger_tag" in schedule:
        kind = ScheduleKind.TRIGGER
    campaign = Campaign.objects.create(
        name=name,
        segment=segment,
        channel=channel,
        goal_event=goal_event,
        attribution_hours=attribution_hours,
        holdout_percent=Decimal(str(holdout_percent)),
        pilot_percent=Decimal(str(pilot_percent)),
        auto_rollout=auto_rollout,
        alpha=alpha,
        min_sample=min_sample,
        schedule_kind=kind,
        send_at=schedule.get("at"),
        cron=schedule.get("cron", ""),
        trigger_event=schedule.get("trigger_event", ""),
        trigger_tag=schedule.get("trigger_tag", ""),
        delay_minutes=schedule.get("delay_minutes", 0) or 0,
        frequency_cap_per_day=frequency_cap_per_day,
        respect_quiet_hours=respect_quiet_hours,
        quiet_start_hour=quiet_start_hour,
        quiet_end_hour=quiet_end_hour,
        parent=parent,
        iteration=(parent.iteration + 1) if parent else 1,
    )
    Variant.objects.bulk_create(
        [
            Variant(
                campaign=campaign,
                position=i,
                name=v["name"],
                weight=v.get("weight", 50),
                title=v.get("title", ""),
                body=v.get("body", ""),
                url=v.get("url", ""),
                coupon_rule_id=v.get("coupon_rule"),
            )
            for i, v in enumerate(variants)
        ]
    )
    record_audit(action="campaigns.create_campaign", obj=campaign, actor=actor, api_key=api_key, details={"name": name})
    return campaign


def _locked(campaign_id: int) -> Campaign:
    campaign = Campaign.objects.select_for_update().filter(pk=campaign_id).first()
    if campaign is None:
        raise errors.CampaignNotFound(f"No campaign {campaign_id}.")
    return campaign


def _refuse_unless(campaign: Campaign, allowed: Iterable[str], action: str) -> None:
    if campaign.status not in allowed:
        raise errors.InvalidTransition(f"Cannot {action} a campaign that is {campaign.status}.", status=campaign.status)


def channel_is_configured(kind: str) -> bool:
    if kind == ChannelKind.EMAIL:
        return True
    config = channels.channel_config(kind)
    return bool(config.enabled and config.effective_url())


@transaction.atomic
def launch_campaign(*, campaign_id: int, actor: Any = None, api_key: Any = None) -> Campaign:
    """Start a draft: at once, at its time, on its cron schedule or on its trigger event."""
    campaign = _locked(campaign_id)
    _refuse_unless(campaign, [CampaignStatus.DRAFT], "launch")
    if not channel_is_configured(campaign.channel):
        raise errors.ChannelNotConfigured(f"The {campaign.channel} channel has no gateway URL configured.")
    now = timezone.now()
    campaign.launched_at = now
    if campaign.schedule_kind == ScheduleKind.AT and campaign.send_at and campaign.send_at > now:
        campaign.status = CampaignStatus.SCHEDULED
    elif campaign.schedule_kind == ScheduleKind.CRON:
        campaign.status = CampaignStatus.RUNNING
        campaign.phase = CampaignPhase.RECURRING
        campaign.periodic_task = _periodic_task_for(campaign)
    elif campaign.schedule_kind == ScheduleKind.TRIGGER:
        campaign.status = CampaignStatus.RUNNING
        campaign.phase = CampaignPhase.TRIGGERED
        if campaign.trigger_tag:
            # Only gains after the launch count.
            campaign.trigger_tag_cursor = _tag_change_horizon(wait=False)
    else:
        campaign.status = CampaignStatus.RUNNING
        _queue_start(campaign.pk)
    campaign.save()
    record_audit(
        action="campaigns.launch", obj=campaign, actor=actor, api_key=api_key, details={"status": campaign.status}
    )
    return campaign


def _periodic_task_for(campaign: Campaign) -> Any:
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    minute, hour, dom, month, dow = campaign.cron.split()
    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow, timezone="UTC"
    )
    task, _ = PeriodicTask.objects.update_or_create(
        name=f"campaign {campaign.pk}: {campaign.name}"[:200],
        defaults={
            "task": "campaigns.tasks.run_recurring",
            "crontab": schedule,
            "kwargs": json.dumps({"campaign_id": campaign.pk}),
            "enabled": True,
        },
    )
    return task


def _queue_start(campaign_id: int) -> None:
    from campaigns import tasks

    transaction.on_commit(lambda: tasks.start_campaign.delay(campaign_id))


@transaction.atomic
def pause_campaign(*, campaign_id: int, actor: Any = None, api_key: Any = None) -> Campaign:
    """Stop sending; pending deliveries wait (workers skip them) until resumed."""
    campaign = _locked(campaign_id)
    _refuse_unless(campaign, [CampaignStatus.RUNNING, CampaignStatus.SCHEDULED], "pause")
    campaign.status = CampaignStatus.PAUSED
    campaign.save(update_fields=["status", "updated_at"])
    if campaign.periodic_task_id:
        type(campaign.periodic_task).objects.filter(pk=campaign.periodic_task_id).update(enabled=False)
    record_audit(action="campaigns.pause", obj=campaign, actor=actor, api_key=api_key)
    return campaign


@transaction.atomic
def resume_campaign(*, campaign_id: int, actor: Any = None, api_key: Any = None) -> Campaign:
    """Continue a paused campaign and queue what is still pending."""
    campaign = _locked(campaign_id)
    _refuse_unless(campaign, [CampaignStatus.PAUSED], "resume")
    if campaign.phase == "" and campaign.schedule_kind in (ScheduleKind.AT, ScheduleKind.NOW):
        due = campaign.send_at is None or campaign.send_at <= timezone.now()
        campaign.status = CampaignStatus.RUNNING if due else CampaignStatus.SCHEDULED
        if due:
            _queue_start(campaign.pk)
    else:
        campaign.status = CampaignStatus.RUNNING
    campaign.save(update_fields=["status", "updated_at"])
    if campaign.periodic_task_id:
        type(campaign.periodic_task).objects.filter(pk=campaign.periodic_task_id).update(enabled=True)
    queue_pending(campaign_id=campaign.pk)
    record_audit(action="campaigns.resume", obj=campaign, actor=actor, api_key=api_key)
    return campaign


# A campaign that has not ended yet may be stopped for good.
CANCELLABLE = (
    CampaignStatus.DRAFT,
    CampaignStatus.SCHEDULED,
    CampaignStatus.RUNNING,
    CampaignStatus.PAUSED,
    CampaignStatus.AWAITING_ROLLOUT,
)
CANCELLED_REASON = "campaign cancelled"


@transaction.atomic
def cancel_campaign(*, campaign_id: int, actor: Any = None, api_key: Any = None) -> Campaign:
    """Stop a campaign for good: nothing more is sent (its pending deliveries are skipped), its
    schedule and trigger no longer fire, and it is neither rolled out nor completed. What was sent
    stays, with its opens, clicks and conversions. A message a worker is sending right now goes."""
    campaign = _locked(campaign_id)
    _refuse_unless(campaign, CANCELLABLE, "cancel")
    previous = campaign.status
    campaign.status = CampaignStatus.CANCELLED
    campaign.save(update_fields=["status", "updated_at"])
    if campaign.periodic_task_id:
        type(campaign.periodic_task).objects.filter(pk=campaign.periodic_task_id).update(enabled=False)
    skipped = campaign.deliveries.filter(status=DeliveryStatus.PENDING).update(
        status=DeliveryStatus.SKIPPED, reason=CANCELLED_REASON, queued_at=None
    )
    record_audit(
        action="campaigns.cancel",
        obj=campaign,
        actor=actor,
        api_key=api_key,
        details={"from": previous, "pending_skipped": skipped},
    )
    return campaign


# --- audience snapshot -------------------------------------------------------------------------

_ASSIGNMENT_COLUMNS = "(campaign_id, profile_id, user_id, role, variant_id, position, assigned_at)"
_HASH = "('x' || substr(md5(%s || r.user_id), 1, 8))::bit(32)::bigint / 4294967296.0"


def snapshot_audience(*, campaign: Campaign, mode: str = "quota", only_profile_ids: Sequence[int] | None = None) -> int:
    """Add the segment's current members who are not assigned yet to the campaign's groups, in
    one INSERT ... SELECT. Returns how many were added.

    `quota`: members are ordered by a hash of (campaign, user) and cut into exact shares
    (holdout, pilot, variants by weight), so group sizes match the configuration to within one
    person. `hash`: each member's group follows from the hash alone, for members who arrive one
    at a time (triggered campaigns)."""
    variants = list(campaign.variants.order_by("position", "id"))
    if not variants:
        return 0
    sql, params = audience_sql(campaign.segment.definition)
    if only_profile_ids is not None:
        sql += " AND p.id = ANY(%s)"
        params = [*params, list(only_profile_ids)]
    holdout = campaign.holdout_percent / Decimal(100)
    pilot = (
        campaign.pilot_percent / Decimal(100) if campaign.schedule_kind in (ScheduleKind.NOW, ScheduleKind.AT) else 0
    )
    total_weight = sum(v.weight for v in variants) or 1
    cumulative, running = [], 0
    for v in variants[:-1]:
        running += v.weight
        cumulative.append(Decimal(running) / Decimal(total_weight))
    rest_role = AssignmentRole.ROLLOUT if pilot else AssignmentRole.TEST
    salt = f"{campaign.pk}:"
    offset = Assignment.objects.filter(campaign=campaign).count()
    now = timezone.now()
    head = (
        f"WITH aud AS ({sql}), fresh AS ("
        " SELECT aud.profile_id, aud.user_id FROM aud WHERE NOT EXISTS ("
        "  SELECT 1 FROM campaigns_assignment x WHERE x.campaign_id = %s AND x.profile_id = aud.profile_id)"
        "), r AS ("
        " SELECT f.profile_id, f.user_id,"
        "  row_number() OVER (ORDER BY md5(%s || f.user_id), f.profile_id) - 1 AS rn,"
        "  count(*) OVER () AS n FROM fresh f"
        ")"
    )
    params = [*params, campaign.pk, salt]
    if mode == "quota":
        # hn/pn: sizes of holdout and pilot; k: place within the tested group of size g.
        g_expr = "pn" if pilot else "(n - hn)"
        variant_cases = " ".join(
            f"WHEN (rn - hn) < round({g_expr} * %s::numeric) THEN {int(v.pk)}" for v in variants[:-1]
        )
        select = (
            ", s AS (SELECT r.*, round(n * %s::numeric) AS hn, round(n * %s::numeric) AS pn FROM r)"
            f" INSERT INTO campaigns_assignment {_ASSIGNMENT_COLUMNS}"
            " SELECT %s, profile_id, user_id,"
            "  CASE WHEN rn < hn THEN 'holdout' WHEN rn < hn + pn THEN 'pilot' ELSE %s END,"
            f"  CASE WHEN rn < hn THEN NULL WHEN %s AND rn >= hn + pn THEN NULL"
            f"   ELSE (CASE {variant_cases} ELSE {int(variants[-1].pk)} END) END,"
            "  rn + %s, %s FROM s"
            " ON CONFLICT (campaign_id, profile_id) DO NOTHING"
        )
        params += [holdout, pilot, campaign.pk, rest_role, bool(pilot), *cumulative, offset, now]
    else:
        u1 = _HASH
        u2 = _HASH
        variant_cases = " ".join(f"WHEN {u2} < %s::numeric THEN {int(v.pk)}" for v in variants[:-1])
        select = (
            f" INSERT INTO campaigns_assignment {_ASSIGNMENT_COLUMNS}"
            f" SELECT %s, r.profile_id, r.user_id, CASE WHEN {u1} < %s::numeric THEN 'holdout' ELSE 'test' END,"
            f"  CASE WHEN {u1} < %s::numeric THEN NULL ELSE (CASE {variant_cases} ELSE {int(variants[-1].pk)} END) END,"
            "  r.rn + %s, %s FROM r"
            " ON CONFLICT (campaign_id, profile_id) DO NOTHING"
        )
        group_salt = f"{campaign.pk}:group:"
        variant_salt = f"{campaign.pk}:variant:"
        case_params = []
        for c in cumulative:
            case_params += [variant_salt, c]
        params += [campaign.pk, group_salt, holdout, group_salt, holdout, *case_params, offset, now]
    with connection.cursor() as cursor:
        cursor.execute(head + select, params)
        return cursor.rowcount


# --- deliveries --------------------------------------------------------------------------------

_CONSENT = {
    ChannelKind.PUSH: "p.push_opt_in",
    ChannelKind.SMS: "(p.sms_opt_in AND p.phone <> '')",
    ChannelKind.EMAIL: "(p.email_opt_in AND p.email <> '')",
    # A webhook feeds one of our own systems, which applies its own consent rules.
    ChannelKind.WEBHOOK: "TRUE",
}


def create_deliveries(
    *,
    campaign: Campaign,
    phase: str,
    roles: Sequence[str],
    not_before: dt.datetime | None = None,
    only_current_members: bool = False,
) -> int:
    """One delivery per assigned member of `roles` for this phase (members without consent for
    the channel get a skipped one, so operators see why). The unique (campaign, profile, phase)
    makes a repeated call harmless."""
    consent = _CONSENT[campaign.channel]
    sql = (
        "INSERT INTO campaigns_delivery (campaign_id, variant_id, profile_id, user_id, channel, phase,"
        " idempotency_key, status, not_before, attempts, reason, coupon_code, created_at)"
        " SELECT a.campaign_id, a.variant_id, a.profile_id, a.user_id, %s, %s, gen_random_uuid(),"
        f" CASE WHEN {consent} THEN 'pending' ELSE 'skipped' END, %s, 0,"
        f" CASE WHEN {consent} THEN '' ELSE 'NO_CONSENT' END, '', now()"
        " FROM campaigns_assignment a JOIN profiles_profile p ON p.id = a.profile_id"
        " WHERE a.campaign_id = %s AND a.role = ANY(%s) AND a.variant_id IS NOT NULL"
    )
    params: list[Any] = [campaign.channel, phase, not_before, campaign.pk, list(roles)]
    if only_current_members:
        aud, aud_params = audience_sql(campaign.segment.definition)
        sql += f" AND a.profile_id IN (SELECT profile_id FROM ({aud}) aud)"
        params += aud_params
    sql += " ON CONFLICT (campaign_id, profile_id, phase) DO NOTHING"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def queue_pending(
    *, campaign_id: int | None = None, phase: str | None = None, requeue_after: dt.timedelta | None = None
) -> int:
    """Queue `deliver_batch` tasks (after commit) for due pending deliveries not queued recently."""
    from campaigns import tasks

    now = timezone.now()
    if requeue_after is None:
        requeue_after = dt.timedelta(seconds=int(_setting("OPSLOOP_DELIVERY_REQUEUE_AFTER_SECONDS", 900)))
    due = Delivery.objects.filter(
        Q(not_before__isnull=True) | Q(not_before__lte=now),
        Q(queued_at__isnull=True) | Q(queued_at__lte=now - requeue_after),
        status=DeliveryStatus.PENDING,
        campaign__status__in=SENDABLE,
    )
    if campaign_id is not None:
        due = due.filter(campaign_id=campaign_id)
    if phase is not None:
        due = due.filter(phase=phase)
    limit = int(_setting("OPSLOOP_SWEEP_LIMIT", 500_000))
    rows = list(due.order_by("campaign_id", "id").values_list("campaign_id", "id")[:limit])
    if not rows:
        return 0
    ids = [r[1] for r in rows]
    Delivery.objects.filter(id__in=ids).update(queued_at=now)
    by_campaign: dict[int, list[int]] = defaultdict(list)
    for cid, did in rows:
        by_campaign[cid].append(did)
    size = batch_size()
    chunks = [group[i : i + size] for group in by_campaign.values() for i in range(0, len(group), size)]

    def send() -> None:
        for chunk in chunks:
            tasks.deliver_batch.delay(chunk)

    transaction.on_commit(send)
    return len(ids)


@transaction.atomic
def start_send(*, campaign_id: int) -> Campaign | None:
    """Snapshot the audience and create the first phase (pilot, or the full send). Does nothing
    if the send already started, so a repeated task is harmless."""
    campaign = Campaign.objects.select_for_update().filter(pk=campaign_id).first()
    if campaign is None or campaign.status != CampaignStatus.RUNNING or campaign.phase:
        return campaign
    snapshot_audience(campaign=campaign)
    now = timezone.now()
    if campaign.pilot_percent > 0:
        campaign.phase = CampaignPhase.PILOT
        campaign.pilot_sent_at = now
        create_deliveries(campaign=campaign, phase=CampaignPhase.PILOT, roles=[AssignmentRole.PILOT])
    else:
        campaign.phase = CampaignPhase.FULL
        create_deliveries(campaign=campaign, phase=CampaignPhase.FULL, roles=[AssignmentRole.TEST])
    campaign.save(update_fields=["phase", "pilot_sent_at", "updated_at"])
    queue_pending(campaign_id=campaign.pk, requeue_after=dt.timedelta(0))
    return campaign


@transaction.atomic
def rollout_campaign(
    *, campaign_id: int, variant_name: str | None = None, actor: Any = None, api_key: Any = None
) -> Campaign:
    """Send the winner (or the named variant) to the rest of the audience after the pilot."""
    from campaigns.selectors import campaign_results

    campaign = _locked(campaign_id)
    _refuse_unless(campaign, [CampaignStatus.RUNNING, CampaignStatus.AWAITING_ROLLOUT], "roll out")
    if campaign.phase != CampaignPhase.PILOT:
        raise errors.NoPilot("Only a campaign in its pilot phase can be rolled out.", phase=campaign.phase)
    if variant_name:
        variant = campaign.variants.filter(name=variant_name).first()
        if variant is None:
            raise errors.VariantNotFound(f"No variant named {variant_name!r} in this campaign.")
    else:
        winner = campaign_results(campaign)["winner"]
        if winner is None:
            raise errors.NoWinner("No variant is significantly better yet; name the variant to roll out.")
        variant = campaign.variants.get(name=winner)
    now = timezone.now()
    Assignment.objects.filter(campaign=campaign, role=AssignmentRole.ROLLOUT).update(variant=variant)
    campaign.winner = variant
    campaign.phase = CampaignPhase.ROLLOUT
    campaign.status = CampaignStatus.RUNNING
    campaign.rolled_out_at = now
    campaign.save(update_fields=["winner", "phase", "status", "rolled_out_at", "updated_at"])
    create_deliveries(campaign=campaign, phase=CampaignPhase.ROLLOUT, roles=[AssignmentRole.ROLLOUT])
    queue_pending(campaign_id=campaign.pk, requeue_after=dt.timedelta(0))
    record_audit(
        action="campaigns.rollout", obj=campaign, actor=actor, api_key=api_key, details={"variant": variant.name}
    )
    return campaign


@transaction.atomic
def run_recurring_send(*, campaign_id: int, run_at: dt.datetime | None = None) -> int:
    """One run of a cron campaign: newcomers are assigned, current members get this run's message."""
    campaign = Campaign.objects.select_for_update().filter(pk=campaign_id).first()
    if campaign is None or campaign.status != CampaignStatus.RUNNING or campaign.schedule_kind != ScheduleKind.CRON:
        return 0
    run_at = run_at or timezone.now()
    snapshot_audience(campaign=campaign)
    created = create_deliveries(
        campaign=campaign, phase=f"run:{run_at:%Y%m%d%H%M}", roles=[AssignmentRole.TEST], only_current_members=True
    )
    queue_pending(campaign_id=campaign.pk, requeue_after=dt.timedelta(0))
    return created


def on_events_ingested(events: Sequence[Any]) -> None:
    """Ingestion listener: queue the triggered campaigns these events start (after commit)."""
    names = {e.name for e in events if e.user_id}
    if not names:
        return
    campaigns = list(
        Campaign.objects.filter(
            status=CampaignStatus.RUNNING, schedule_kind=ScheduleKind.TRIGGER, trigger_event__in=names
        ).values_list("id", "trigger_event")
    )
    if not campaigns:
        return
    from campaigns import tasks

    items = [
        [cid, e.user_id, str(e.event_id), e.timestamp.isoformat()]
        for cid, trigger in campaigns
        for e in events
        if e.name == trigger and e.user_id
    ]
    transaction.on_commit(lambda: tasks.start_triggered.delay(items))


def create_triggered_deliveries(*, campaign: Campaign, rows: Sequence[tuple[int, str, dt.datetime]]) -> int:
    """The deliveries of a triggered campaign for `(profile_id, phase, not_before)` rows: the
    people are assigned by hash first (holdout included), then members of the segment outside the
    holdout get one delivery per row's phase (a skipped one without consent), and due ones are
    queued. The unique (campaign, profile, phase) makes a repeated call harmless. Returns how many
    deliveries were created."""
    pids = sorted({r[0] for r in rows})
    if not pids:
        return 0
    snapshot_audience(campaign=campaign, mode="hash", only_profile_ids=pids)
    aud, aud_params = audience_sql(campaign.segment.definition)
    consent = _CONSENT[campaign.channel]
    sql = (
        "INSERT INTO campaigns_delivery (campaign_id, variant_id, profile_id, user_id, channel, phase,"
        " idempotency_key, status, not_before, attempts, reason, coupon_code, created_at)"
        " SELECT a.campaign_id, a.variant_id, a.profile_id, a.user_id, %s, t.phase, gen_random_uuid(),"
        f" CASE WHEN {consent} THEN 'pending' ELSE 'skipped' END, t.not_before, 0,"
        f" CASE WHEN {consent} THEN '' ELSE 'NO_CONSENT' END, '', now()"
        " FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[]) AS t(profile_id, phase, not_before)"
        " JOIN campaigns_assignment a ON a.campaign_id = %s AND a.profile_id = t.profile_id"
        " JOIN profiles_profile p ON p.id = a.profile_id"
        f" WHERE a.role <> 'holdout' AND a.profile_id IN (SELECT profile_id FROM ({aud}) aud)"
        " ON CONFLICT (campaign_id, profile_id, phase) DO NOTHING"
    )
    params = [
        campaign.channel,
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        campaign.pk,
        *aud_params,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        created = cursor.rowcount
    queue_pending(campaign_id=campaign.pk, requeue_after=dt.timedelta(0))
    return created


@transaction.atomic
def handle_triggers(*, items: Sequence[Sequence[Any]]) -> int:
    """Create the delayed deliveries of triggered campaigns for `[campaign_id, user_id, event_id,
    timestamp]` items: members of the segment only, holdout left out, one per triggering event."""
    by_campaign: dict[int, list[tuple[str, str, dt.datetime]]] = defaultdict(list)
    for cid, user_id, event_id, ts in items:
        by_campaign[int(cid)].append((user_id, event_id, dt.datetime.fromisoformat(ts)))
    created = 0
    with connection.cursor() as cursor:
        # FOR SHARE: triggers of one campaign are handled side by side, but a cancel or a pause
        # (FOR UPDATE) waits for them, and one that commits first is seen: the status is read again.
        cursor.execute(
            "SELECT id FROM campaigns_campaign WHERE id = ANY(%s) AND status = %s ORDER BY id FOR SHARE",
            [list(by_campaign), CampaignStatus.RUNNING],
        )
        running = [row[0] for row in cursor.fetchall()]
    for campaign in Campaign.objects.filter(pk__in=running).select_related("segment"):
        triggers = by_campaign[campaign.pk]
        profile_of = dict(
            Profile.objects.filter(
                identities__kind="user_id", identities__value__in={t[0] for t in triggers}
            ).values_list("identities__value", "id")
        )
        if not profile_of:
            continue
        delay = dt.timedelta(minutes=campaign.delay_minutes)
        rows = [(profile_of[u], f"trigger:{eid}", ts + delay) for u, eid, ts in triggers if u in profile_of]
        created += create_triggered_deliveries(campaign=campaign, rows=rows)
    return created


def _tag_change_horizon(*, wait: bool = True) -> int | None:
    """The highest tag change id such that no row with a lower or equal id can still appear.

    Ids come from a sequence when a row is inserted, but rows become visible when their
    transaction commits, so a long rule recompute may commit ids below ones already seen. With
    `wait`, a brief SHARE lock on the table waits for the transactions writing to it to finish
    (at most OPSLOOP_TAG_TRIGGER_LOCK_TIMEOUT_MS; None when they take longer, try again later);
    after that every id up to the max is settled. Without it (at launch) the max seen is enough."""
    if not wait:
        return TagChange.objects.order_by("-id").values_list("id", flat=True).first() or 0
    timeout_ms = int(_setting("OPSLOOP_TAG_TRIGGER_LOCK_TIMEOUT_MS", 2000))
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{timeout_ms}ms"])
            cursor.execute(f"LOCK TABLE {TagChange._meta.db_table} IN SHARE MODE")
            cursor.execute(f"SELECT COALESCE(max(id), 0) FROM {TagChange._meta.db_table}")
            return cursor.fetchone()[0]
    except OperationalError:
        logger.info("Tag changes are being written; tag triggers wait for the next sweep.")
        return None


def trigger_on_tag_gains() -> int:
    """Sweeper step for campaigns triggered by a tag: every 'added' tag change recorded since a
    running campaign's cursor starts the triggered send for that person (as an event trigger does:
    segment members only, holdout left out, consent, after the delay). One delivery per person and
    campaign (phase `tag:<name>`), so regaining the tag later sends nothing more. Returns how many
    deliveries were created."""
    running = Campaign.objects.filter(status=CampaignStatus.RUNNING, schedule_kind=ScheduleKind.TRIGGER).exclude(
        trigger_tag=""
    )
    if not running.exists():
        return 0
    horizon = _tag_change_horizon()
    if horizon is None:
        return 0
    created = 0
    for campaign_id in running.filter(trigger_tag_cursor__lt=horizon).values_list("pk", flat=True):
        try:
            created += _trigger_campaign_on_tag_gains(campaign_id=campaign_id, horizon=horizon)
        except Exception:
            logger.exception("Tag trigger of campaign %s failed; retried at the next sweep.", campaign_id)
    return created


@transaction.atomic
def _trigger_campaign_on_tag_gains(*, campaign_id: int, horizon: int) -> int:
    """One campaign's new tag gains, up to `horizon`, in one transaction with its cursor: a crash
    before the commit leaves both undone, and the unique (campaign, profile, phase) guards the rest."""
    campaign = (
        Campaign.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("segment")
        .filter(pk=campaign_id, status=CampaignStatus.RUNNING, schedule_kind=ScheduleKind.TRIGGER)
        .first()
    )
    if campaign is None or not campaign.trigger_tag or campaign.trigger_tag_cursor >= horizon:
        return 0
    limit = int(_setting("OPSLOOP_TAG_TRIGGER_BATCH", 50_000))
    gains = list(
        TagChange.objects.filter(
            tag__name=campaign.trigger_tag,
            action=TagChangeAction.ADDED,
            id__gt=campaign.trigger_tag_cursor,
            id__lte=horizon,
        )
        .order_by("id")
        .values_list("id", "profile_id", "at")[:limit]
    )
    cursor = gains[-1][0] if len(gains) == limit else horizon
    first_gain: dict[int, dt.datetime] = {}
    for _, profile_id, at in gains:
        first_gain.setdefault(profile_id, at)
    delay = dt.timedelta(minutes=campaign.delay_minutes)
    phase = f"tag:{campaign.trigger_tag}"
    created = create_triggered_deliveries(
        campaign=campaign, rows=[(pid, phase, at + delay) for pid, at in first_gain.items()]
    )
    Campaign.objects.filter(pk=campaign.pk).update(trigger_tag_cursor=cursor)
    return created


# --- sending -----------------------------------------------------------------------------------


def _tz(name: str) -> dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(name) if name else zoneinfo.ZoneInfo(_setting("OPSLOOP_DEFAULT_USER_TIMEZONE", "UTC"))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def quiet_until(*, now: dt.datetime, tz_name: str, start_hour: int, end_hour: int) -> dt.datetime | None:
    """The end of the quiet hours if `now` falls in them in the person's own time zone, else None."""
    if start_hour == end_hour:
        return None
    local = now.astimezone(_tz(tz_name))
    hour = local.hour
    quiet = (start_hour <= hour or hour < end_hour) if start_hour > end_hour else (start_hour <= hour < end_hour)
    if not quiet:
        return None
    morning = local.replace(hour=end_hour, minute=0, second=0, microsecond=0)
    if morning <= local:
        morning = (local + dt.timedelta(days=1)).replace(hour=end_hour, minute=0, second=0, microsecond=0)
        # Re-localise: the day after may have a different UTC offset (daylight saving).
        morning = dt.datetime.combine(morning.date(), dt.time(end_hour), tzinfo=_tz(tz_name))
    return morning.astimezone(dt.UTC)


def backoff_seconds(*, attempts: int, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: half the step fixed, half random, so retries of
    many deliveries spread out instead of hitting the provider together."""
    step = min(cap, base * (2 ** max(0, attempts - 1)))
    return step / 2 + random.uniform(0, step / 2)


def _claim(delivery_ids: Sequence[int]) -> list[int]:
    # The conditional UPDATE is the lock: of two workers given the same ids, only one moves
    # a row from pending to sending.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE campaigns_delivery d SET status = 'sending', claimed_at = clock_timestamp(),"
            " attempts = d.attempts + 1 FROM campaigns_campaign c"
            " WHERE d.id = ANY(%s) AND d.status = 'pending'"
            " AND (d.not_before IS NULL OR d.not_before <= clock_timestamp())"
            " AND c.id = d.campaign_id AND c.status = ANY(%s) RETURNING d.id",
            [list(delivery_ids), list(SENDABLE)],
        )
        return [row[0] for row in cursor.fetchall()]


def _apply_cap(campaign: Campaign, deliveries: list[Delivery], now: dt.datetime) -> list[Delivery]:
    """Count each delivery against its person's daily cap (across all campaigns) with a
    conditional upsert; those over the cap, or fatigued on this channel, are skipped."""
    keep, skipped = [], []
    fatigued = _recently_messaged_fatigued(campaign, deliveries, now)
    todo = []
    for d in deliveries:
        if d.profile_id in fatigued:
            skipped.append((d.id, "FATIGUED"))
        elif d.cap_day is not None or campaign.frequency_cap_per_day == 0:
            keep.append(d)
        else:
            todo.append(d)
    if todo:
        days = [now.astimezone(_tz(d.profile.timezone)).date() for d in todo]
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO campaigns_dailysendcount (profile_id, day, count)"
                " SELECT * FROM unnest(%s::bigint[], %s::date[], %s::int[])"
                " ON CONFLICT (profile_id, day) DO UPDATE SET count = campaigns_dailysendcount.count + 1"
                " WHERE campaigns_dailysendcount.count < %s RETURNING profile_id",
                [[d.profile_id for d in todo], days, [1] * len(todo), campaign.frequency_cap_per_day],
            )
            counted = {row[0] for row in cursor.fetchall()}
        for d, day in zip(todo, days, strict=True):
            if d.profile_id in counted:
                d.cap_day = day
                keep.append(d)
            else:
                skipped.append((d.id, "FREQUENCY_CAP"))
        Delivery.objects.bulk_update([d for d in todo if d.cap_day], ["cap_day"])
    if skipped:
        _set_final(skipped, DeliveryStatus.SKIPPED)
    return keep


def _recently_messaged_fatigued(campaign: Campaign, deliveries: list[Delivery], now: dt.datetime) -> set[int]:
    from profiles.models import ProfileTag

    tag = f"{campaign.channel}_fatigued"
    pids = [d.profile_id for d in deliveries]
    tagged = set(ProfileTag.objects.filter(tag__name=tag, profile_id__in=pids).values_list("profile_id", flat=True))
    if not tagged:
        return set()
    cooldown = dt.timedelta(days=int(_setting("OPSLOOP_FATIGUE_COOLDOWN_DAYS", 7)))
    return set(
        Delivery.objects.filter(
            profile_id__in=tagged, channel=campaign.channel, sent_at__gte=now - cooldown
        ).values_list("profile_id", flat=True)
    )


def _set_final(rows: Sequence[tuple[int, str]], status: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE campaigns_delivery d SET status = %s, reason = t.reason,"
            " failed_at = CASE WHEN %s = 'failed' THEN now() ELSE d.failed_at END"
            " FROM unnest(%s::bigint[], %s::text[]) AS t(id, reason) WHERE d.id = t.id AND d.status = 'sending'",
            [status, status, [r[0] for r in rows], [r[1][:500] for r in rows]],
        )


def _payload(d: Delivery) -> dict[str, Any]:
    variant = d.variant
    return {
        "delivery_id": d.pk,
        "idempotency_key": str(d.idempotency_key),
        "campaign": d.campaign_id,
        "variant": variant.name,
        "user_id": d.user_id,
        "channel": d.channel,
        "title": variant.title,
        "body": variant.body,
        "url": channels.click_url(d.pk) if variant.url else "",
        **({"coupon_code": d.coupon_code} if d.coupon_code else {}),
    }


def _issue_coupons(deliveries: list[Delivery]) -> None:
    needing = [d for d in deliveries if d.variant.coupon_rule_id and not d.coupon_code]
    if not needing:
        return
    try:
        from coupons import services as coupon_services

        rule_model = apps.get_model("coupons", "CouponRule")
    except (ImportError, LookupError):
        return
    rules = {r.pk: r for r in rule_model.objects.filter(pk__in={d.variant.coupon_rule_id for d in needing})}
    for d in needing:
        rule = rules.get(d.variant.coupon_rule_id)
        if rule is None:
            continue
        try:
            coupon = coupon_services.issue_coupon(
                rule=rule,
                profile=d.profile,
                request_id=f"delivery:{d.idempotency_key}",
                source="campaign",
                source_ref=d.variant.source_ref,
            )
        except DomainError as exc:
            # The message still goes out; the reason shows why it carries no coupon.
            logger.info("coupon not issued for delivery %s: %s", d.pk, exc.reason)
            d.reason = f"COUPON_NOT_ISSUED: {exc.reason}"
            Delivery.objects.filter(pk=d.pk).update(reason=d.reason)
            continue
        d.coupon_code = coupon.code
        Delivery.objects.filter(pk=d.pk).update(coupon_code=coupon.code)


def deliver(*, delivery_ids: Sequence[int]) -> dict[str, int]:
    """Send these deliveries: claim, apply quiet hours and the frequency cap, post in parallel
    within the channel's rate limit, then record each outcome. Safe to run twice."""
    claimed = _claim(delivery_ids)
    counts = {"sent": 0, "retry": 0, "failed": 0, "deferred": 0, "skipped": 0}
    if not claimed:
        return counts
    now = timezone.now()
    rows = list(Delivery.objects.filter(pk__in=claimed).select_related("variant", "campaign", "profile").order_by("id"))
    by_campaign: dict[int, list[Delivery]] = defaultdict(list)
    for d in rows:
        by_campaign[d.campaign_id].append(d)
    for group in by_campaign.values():
        campaign = group[0].campaign
        ready, deferred = [], []
        for d in group:
            until = (
                quiet_until(
                    now=now,
                    tz_name=d.profile.timezone,
                    start_hour=campaign.quiet_start_hour,
                    end_hour=campaign.quiet_end_hour,
                )
                if campaign.respect_quiet_hours
                else None
            )
            (deferred if until else ready).append((d, until))
        if deferred:
            _defer([(d.pk, until) for d, until in deferred], undo_attempt=True)
            counts["deferred"] += len(deferred)
        with transaction.atomic():
            ready_rows = _apply_cap(campaign, [d for d, _ in ready], now)
        counts["skipped"] += len(ready) - len(ready_rows)
        _issue_coupons(ready_rows)
        outcomes = _send_all(campaign.channel, ready_rows)
        _record_outcomes(campaign.channel, ready_rows, outcomes, counts)
    return counts


def _send_all(kind: str, rows: list[Delivery]) -> list[channels.Outcome]:
    config = channels.channel_config(kind)
    if not config.enabled:
        return [channels.Outcome(channels.RETRY, "channel disabled")] * len(rows)
    if kind == ChannelKind.EMAIL:
        conn = channels.email_connection()
        out = []
        try:
            conn.open()  # one SMTP session for the whole batch
        except OSError as exc:
            return [channels.Outcome(channels.RETRY, f"SMTP connect: {exc.__class__.__name__}")] * len(rows)
        try:
            for d in rows:
                channels.acquire_send_slot(kind, config.rate_per_second)
                out.append(channels.send_email(conn, to=d.profile.email, payload=_payload(d), delivery_id=d.pk))
        finally:
            conn.close()
        return out
    threads = int(_setting("OPSLOOP_DELIVERY_THREADS", 8))
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=threads)
    session.mount("http://", adapter)
    session.mount("https://", adapter)

    def one(d: Delivery) -> channels.Outcome:
        if not channels.acquire_send_slot(kind, config.rate_per_second):
            return channels.Outcome(channels.RETRY, "rate limited")
        return channels.http_post(session, config, _payload(d))

    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(one, rows))
    finally:
        session.close()


def _defer(rows: Sequence[tuple[int, dt.datetime]], *, undo_attempt: bool = False, reason: str = "") -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE campaigns_delivery d SET status = 'pending', not_before = t.not_before, queued_at = NULL,"
            " attempts = d.attempts - %s, reason = %s"
            " FROM unnest(%s::bigint[], %s::timestamptz[]) AS t(id, not_before)"
            " WHERE d.id = t.id AND d.status = 'sending'",
            [1 if undo_attempt else 0, reason, [r[0] for r in rows], [r[1] for r in rows]],
        )


def _record_outcomes(kind: str, rows: list[Delivery], outcomes: list[channels.Outcome], counts: dict) -> None:
    from campaigns import tasks

    config = channels.channel_config(kind)
    sent = [d.pk for d, o in zip(rows, outcomes, strict=True) if o.kind == channels.SENT]
    failed, retries = [], []
    now = timezone.now()
    for d, o in zip(rows, outcomes, strict=True):
        if o.kind == channels.FAILED:
            failed.append((d.pk, o.reason))
        elif o.kind == channels.RETRY:
            if d.attempts >= config.max_attempts:
                failed.append((d.pk, f"GAVE_UP after {d.attempts} attempts: {o.reason}"))
            else:
                delay = backoff_seconds(
                    attempts=d.attempts, base=config.backoff_base_seconds, cap=config.backoff_max_seconds
                )
                retries.append((d.pk, now + dt.timedelta(seconds=delay), o.reason, delay))
    if sent:
        Delivery.objects.filter(pk__in=sent, status=DeliveryStatus.SENDING).update(
            status=DeliveryStatus.SENT, sent_at=now, reason=""
        )
    if failed:
        _set_final(failed, DeliveryStatus.FAILED)
    for pk, when, reason, delay in retries:
        _defer([(pk, when)], reason=f"retrying: {reason}"[:500])
        tasks.deliver_batch.apply_async(args=[[pk]], countdown=delay)
    counts["sent"] += len(sent)
    counts["failed"] += len(failed)
    counts["retry"] += len(retries)


def send_test_message(*, campaign: Campaign, variant: Variant, user_id: str, actor: Any = None) -> channels.Outcome:
    """Send one variant to a staff member's own device now, outside the campaign's counters."""
    profile = Profile.objects.filter(user_id=user_id).first()
    if profile is None:
        raise errors.NoRecipient(f"No profile with user id {user_id!r}.")
    payload = {
        "delivery_id": None,
        "idempotency_key": f"test-{campaign.pk}-{variant.pk}-{timezone.now().timestamp()}",
        "campaign": campaign.pk,
        "variant": variant.name,
        "user_id": user_id,
        "channel": campaign.channel,
        "title": f"[TEST] {variant.title}",
        "body": variant.body,
        "url": variant.url,
        "test": True,
    }
    if campaign.channel == ChannelKind.EMAIL:
        outcome = channels.send_email(channels.email_connection(), to=profile.email, payload=payload, delivery_id=0)
    else:
        with requests.Session() as session:
            outcome = channels.http_post(session, channels.channel_config(campaign.channel), payload)
    record_audit(
        action="campaigns.send_test_message",
        obj=campaign,
        actor=actor,
        details={"variant": variant.name, "user_id": user_id, "outcome": outcome.kind, "reason": outcome.reason},
    )
    return outcome


# --- feedback ----------------------------------------------------------------------------------

RECEIPT_COLUMNS = {"delivered": "delivered_at", "opened": "opened_at", "clicked": "clicked_at", "failed": "failed_at"}


@transaction.atomic
@transaction.atomic
def record_receipts(*, receipts: Sequence[dict[str, Any]]) -> int:
    """Apply provider callbacks. Each timestamp is kept once (the first reported), so replays
    change nothing; `failed` does not undo a delivery already reported delivered."""
    applied = 0
    for kind, column in RECEIPT_COLUMNS.items():
        batch = [r for r in receipts if r["status"] == kind]
        if not batch:
            continue
        status_sql = {
            "delivered": "CASE WHEN d.status IN ('sent', 'sending') THEN 'delivered' ELSE d.status END",
            "failed": "CASE WHEN d.status IN ('sent', 'sending') THEN 'failed' ELSE d.status END",
        }.get(kind, "CASE WHEN d.status = 'sent' THEN 'delivered' ELSE d.status END")
        opened = ", opened_at = COALESCE(d.opened_at, t.at)" if kind == "clicked" else ""
        delivered = ", delivered_at = COALESCE(d.delivered_at, t.at)" if kind in ("opened", "clicked") else ""
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE campaigns_delivery d SET {column} = COALESCE(d.{column}, t.at), status = {status_sql}"
                f"{opened}{delivered}"
                " FROM unnest(%s::bigint[], %s::timestamptz[]) AS t(id, at) WHERE d.id = t.id",
                [[r["delivery_id"] for r in batch], [r["at"] for r in batch]],
            )
            applied += cursor.rowcount
    return applied


def record_click(*, delivery_id: int) -> str | None:
    """Note a click on a tracked link; returns where to send the person (the variant's URL)."""
    now = timezone.now()
    record_receipts(receipts=[{"delivery_id": delivery_id, "status": "clicked", "at": now}])
    return Variant.objects.filter(deliveries__pk=delivery_id).values_list("url", flat=True).first()


def record_open(*, delivery_id: int) -> None:
    record_receipts(receipts=[{"delivery_id": delivery_id, "status": "opened", "at": timezone.now()}])


# --- sweeper, completion, next iteration -------------------------------------------------------


def sweep(*, stale_after: dt.timedelta | None = None, requeue_after: dt.timedelta | None = None) -> dict[str, int]:
    """Periodic housekeeping (beat, every minute): start scheduled one-offs that are due, start
    the triggered sends of tags gained since the last sweep, put deliveries stuck in `sending` (a
    killed worker) back to pending, queue due pending ones, end pilots and complete campaigns.
    Every step is idempotent."""
    now = timezone.now()
    if stale_after is None:
        stale_after = dt.timedelta(seconds=int(_setting("OPSLOOP_DELIVERY_STALE_SECONDS", 300)))
    report = {"started": 0, "tag_triggered": 0, "unstuck": 0, "queued": 0, "rolled_out": 0, "completed": 0}
    with transaction.atomic():
        due = Campaign.objects.select_for_update(skip_locked=True).filter(
            status=CampaignStatus.SCHEDULED, send_at__lte=now
        )
        for campaign in due:
            campaign.status = CampaignStatus.RUNNING
            campaign.save(update_fields=["status", "updated_at"])
            _queue_start(campaign.pk)
            report["started"] += 1
    report["tag_triggered"] = trigger_on_tag_gains()
    with transaction.atomic():
        stuck = Delivery.objects.filter(status=DeliveryStatus.SENDING, claimed_at__lte=now - stale_after)
        # A cancelled campaign's message whose worker died mid-send is not sent again.
        stuck.filter(campaign__status=CampaignStatus.CANCELLED).update(
            status=DeliveryStatus.SKIPPED, reason=CANCELLED_REASON, queued_at=None
        )
        report["unstuck"] = stuck.update(status=DeliveryStatus.PENDING, queued_at=None)
        report["queued"] = queue_pending(requeue_after=requeue_after)
    for campaign in Campaign.objects.filter(status=CampaignStatus.RUNNING, phase=CampaignPhase.PILOT):
        if end_pilot_if_due(campaign_id=campaign.pk, now=now):
            report["rolled_out"] += 1
    for campaign in Campaign.objects.filter(
        status=CampaignStatus.RUNNING, phase__in=[CampaignPhase.FULL, CampaignPhase.ROLLOUT]
    ):
        if not campaign.deliveries.filter(status__in=[DeliveryStatus.PENDING, DeliveryStatus.SENDING]).exists():
            complete_campaign(campaign_id=campaign.pk)
            report["completed"] += 1
    for campaign in Campaign.objects.filter(status=CampaignStatus.COMPLETED, feedback_applied_at__isnull=True):
        if campaign.completed_at and campaign.completed_at + dt.timedelta(hours=campaign.attribution_hours) <= now:
            apply_feedback(campaign_id=campaign.pk)
    return report


@transaction.atomic
def end_pilot_if_due(*, campaign_id: int, now: dt.datetime | None = None) -> bool:
    """After the pilot's attribution window: roll the winner out if the campaign allows it and
    the result is significant, else wait for an operator. True if rolled out."""
    from campaigns.selectors import campaign_results

    now = now or timezone.now()
    campaign = _locked(campaign_id)
    if campaign.status != CampaignStatus.RUNNING or campaign.phase != CampaignPhase.PILOT or not campaign.pilot_sent_at:
        return False
    if campaign.deliveries.filter(
        phase=CampaignPhase.PILOT, status__in=[DeliveryStatus.PENDING, DeliveryStatus.SENDING]
    ).exists():
        return False
    last_sent = campaign.deliveries.filter(phase=CampaignPhase.PILOT).exclude(sent_at=None).order_by("-sent_at")
    window_start = last_sent.values_list("sent_at", flat=True).first() or campaign.pilot_sent_at
    if window_start + dt.timedelta(hours=campaign.attribution_hours) > now:
        return False
    winner = campaign_results(campaign)["winner"] if campaign.auto_rollout else None
    if winner:
        rollout_campaign(campaign_id=campaign.pk, variant_name=winner)
        return True
    campaign.status = CampaignStatus.AWAITING_ROLLOUT
    campaign.save(update_fields=["status", "updated_at"])
    return False


@transaction.atomic
def complete_campaign(*, campaign_id: int, actor: Any = None) -> Campaign:
    from campaigns.selectors import campaign_results

    campaign = _locked(campaign_id)
    if campaign.status == CampaignStatus.COMPLETED:
        return campaign
    campaign.status = CampaignStatus.COMPLETED
    campaign.completed_at = timezone.now()
    results = campaign_results(campaign)
    if campaign.winner_id is None and results["winner"]:
        campaign.winner = campaign.variants.filter(name=results["winner"]).first()
    campaign.results_snapshot = results
    campaign.save()
    if campaign.periodic_task_id:
        type(campaign.periodic_task).objects.filter(pk=campaign.periodic_task_id).update(enabled=False)
    record_audit(action="campaigns.complete", obj=campaign, actor=actor)
    return campaign


@transaction.atomic
def apply_feedback(*, campaign_id: int) -> dict[str, int]:
    """Tag recipients by what they did: converted -> `responds_to_<channel>`, redeemed the
    campaign's coupon -> `coupon_sensitive`, ignored the last N messages of the channel in a row
    -> `<channel>_fatigued` (taken away again when they respond)."""
    from campaigns.selectors import campaign_results, converted_profile_ids, coupon_redeemer_ids
    from profiles import services as profile_services

    campaign = _locked(campaign_id)
    converters = converted_profile_ids(campaign)
    redeemers = coupon_redeemer_ids(campaign)
    recipients = set(campaign.deliveries.exclude(sent_at=None).values_list("profile_id", flat=True))
    responders = (converters & recipients) | set(
        campaign.deliveries.exclude(clicked_at=None).values_list("profile_id", flat=True)
    )
    n = int(_setting("OPSLOOP_FATIGUE_AFTER_IGNORED", 3))
    with connection.cursor() as cursor:
        # The last n sent messages of each recipient on this channel, none opened or clicked.
        cursor.execute(
            "SELECT profile_id FROM ("
            " SELECT d.profile_id, d.opened_at, d.clicked_at,"
            "  row_number() OVER (PARTITION BY d.profile_id ORDER BY d.sent_at DESC) AS k"
            " FROM campaigns_delivery d WHERE d.channel = %s AND d.sent_at IS NOT NULL AND d.profile_id = ANY(%s)"
            ") x WHERE k <= %s GROUP BY profile_id"
            " HAVING count(*) = %s AND bool_and(opened_at IS NULL AND clicked_at IS NULL)",
            [campaign.channel, list(recipients), n, n],
        )
        ignored = {row[0] for row in cursor.fetchall()} - responders
    tagged = {
        f"responds_to_{campaign.channel}": profile_services.tag_profiles(
            tag_name=f"responds_to_{campaign.channel}", profile_ids=responders, source="campaign", category="response"
        ),
        "coupon_sensitive": profile_services.tag_profiles(
            tag_name="coupon_sensitive", profile_ids=redeemers, source="campaign", category="response"
        ),
        f"{campaign.channel}_fatigued": profile_services.tag_profiles(
            tag_name=f"{campaign.channel}_fatigued", profile_ids=ignored, source="campaign", category="fatigue"
        ),
    }
    profile_services.untag_profiles(tag_name=f"{campaign.channel}_fatigued", profile_ids=responders)
    campaign.feedback_applied_at = timezone.now()
    campaign.results_snapshot = campaign_results(campaign)
    campaign.save(update_fields=["feedback_applied_at", "results_snapshot", "updated_at"])
    return tagged


@transaction.atomic
def clone_campaign(*, campaign_id: int, actor: Any = None, api_key: Any = None) -> Campaign:
    """The next iteration of a completed campaign: same audience and settings, the winner as
    the new control (first variant), the other variants kept as challengers. A cancelled one is
    cloned too (its variants in their order, unless it had a winner): a campaign stopped for a
    mistake is mended and launched again as a draft of its own."""
    source = _locked(campaign_id)
    _refuse_unless(
        source, [CampaignStatus.COMPLETED, CampaignStatus.AWAITING_ROLLOUT, CampaignStatus.CANCELLED], "clone"
    )
    variants = list(source.variants.order_by("position", "id"))
    if source.winner_id:
        variants.sort(key=lambda v: v.pk != source.winner_id)
    schedule: dict[str, Any] = {}
    if source.schedule_kind == ScheduleKind.CRON:
        schedule = {"cron": source.cron}
    elif source.schedule_kind == ScheduleKind.TRIGGER and source.trigger_tag:
        schedule = {"trigger_tag": source.trigger_tag, "delay_minutes": source.delay_minutes}
    elif source.schedule_kind == ScheduleKind.TRIGGER:
        schedule = {"trigger_event": source.trigger_event, "delay_minutes": source.delay_minutes}
    clone = create_campaign(
        name=f"{source.name.split(' (iteration')[0]} (iteration {source.iteration + 1})"[:200],
        segment=source.segment,
        channel=source.channel,
        variants=[
            {
                "name": v.name,
                "weight": v.weight,
                "title": v.title,
                "body": v.body,
                "url": v.url,
                "coupon_rule": v.coupon_rule_id,
            }
            for v in variants
        ],
        goal_event=source.goal_event,
        attribution_hours=source.attribution_hours,
        holdout_percent=source.holdout_percent,
        pilot_percent=source.pilot_percent,
        auto_rollout=source.auto_rollout,
        alpha=source.alpha,
        min_sample=source.min_sample,
        schedule=schedule,
        frequency_cap_per_day=source.frequency_cap_per_day,
        respect_quiet_hours=source.respect_quiet_hours,
        quiet_start_hour=source.quiet_start_hour,
        quiet_end_hour=source.quiet_end_hour,
        parent=source,
        actor=actor,
        api_key=api_key,
    )
    record_audit(action="campaigns.clone", obj=clone, actor=actor, api_key=api_key, details={"from": source.pk})
    return clone
