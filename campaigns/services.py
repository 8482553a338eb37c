"""Writes of the campaigns app: one function per operator or system action.

The flow of a one-off campaign: `launch_campaign` -> (task) `start_send` snapshots the audience
into assignments and creates the first phase's deliveries -> (tasks) `deliver` sends them in
batches -> `sweep` (beat, every minute) re-queues lost or deferred work, rolls a finished pilot
out when allowed and marks campaigns whose last message went out as `sent` ->
`close_attribution_windows` (beat) completes them once their attribution window has closed and
`apply_feedback` tags their recipients.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import requests
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import OperationalError, connection, transaction
from django.db.models import Q, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce, NullIf
from django.utils import timezone
from django.utils.translation import gettext

from access.services import record_audit
from campaigns import bandit, channels, errors, sending, validation
from campaigns.models import (
    GATEWAY_FIELDS,
    Allocation,
    AllocationKind,
    AllocationReason,
    Assignment,
    AssignmentRole,
    Campaign,
    CampaignPhase,
    CampaignStatus,
    Channel,
    ChannelKind,
    Delivery,
    DeliveryStatus,
    PendingTrigger,
    ScheduleKind,
    Segment,
    Variant,
)
from campaigns.segments import audience_sql, compile_definition
from config.celery import publish
from config.failures import log_failure
from config.outbound import url_host
from profiles.models import Profile, TagChange, TagChangeAction

logger = logging.getLogger(__name__)

SENDABLE = (CampaignStatus.RUNNING, CampaignStatus.AWAITING_ROLLOUT)


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def batch_size() -> int:
    return int(_setting("OPSLOOP_DELIVERY_BATCH_SIZE", 200))


# --- segments ----------------------------------------------------------------------------------


def create_segment(
    *, name: str, definition: Any, description: str = "", actor: Any = None, api_key: Any = None
) -> Segment:
    """Store a new segment after compiling its definition (DefinitionError names what is wrong)."""
    segment = Segment(name=name, definition=definition, description=description)
    return save_segment(segment=segment, actor=actor, api_key=api_key)


@transaction.atomic
def save_segment(*, segment: Segment, changed: Sequence[str] = (), actor: Any = None, api_key: Any = None) -> Segment:
    """Create or change a segment; its definition must compile (DefinitionError names what is
    wrong). Campaigns already sent keep the audience they had."""
    compile_definition(segment.definition)
    created = segment._state.adding
    segment.save()
    record_audit(
        action="campaigns.segment_created" if created else "campaigns.segment_changed",
        obj=segment,
        actor=actor,
        api_key=api_key,
        details={"name": segment.name, "definition": segment.definition, "changed": list(changed)},
    )
    return segment


@transaction.atomic
@transaction.atomic
def save_channel(*, channel: Channel, changed: Sequence[str] = (), actor: Any = None) -> Channel:
    """Change how a channel sends (gateway, rate, retries, whether it is enabled). Its gateway URL
    and token need `campaigns.set_channel_gateway` of a staff actor (None: the system, the demo);
    the audit names the old and the new host, never the token."""
    before = Channel.objects.select_for_update().filter(pk=channel.pk).first() if channel.pk else None
    old = {f: getattr(before, f) if before else "" for f in GATEWAY_FIELDS}
    old_host = url_host(before.effective_url()) if before else ""
    gateway_changed = [f for f in GATEWAY_FIELDS if getattr(channel, f) != old[f]]
    if gateway_changed and actor is not None and not actor.has_perm("campaigns.set_channel_gateway"):
        raise PermissionDenied("Changing a channel's gateway URL or token needs the permission set_channel_gateway.")
    channel.save()
    details: dict[str, Any] = {"fields": sorted(set(changed) | set(gateway_changed)), "url": channel.url}
    if gateway_changed:
        details.update(
            old_host=old_host,
            new_host=url_host(channel.effective_url()),
            token_changed="token" in gateway_changed,
        )
    record_audit(action="campaigns.channel_changed", obj=channel, actor=actor, details=details)
    return channel


# --- campaigns ---------------------------------------------------------------------------------


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
    allocation: str = AllocationKind.FIXED,
    bandit_floor_percent: Decimal = Decimal(5),
    bandit_interval_minutes: int = 60,
    margin_percent: Decimal = Decimal(30),
    bandit_seed: int | None = None,
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
        allocation=allocation,
        bandit_floor_percent=Decimal(str(bandit_floor_percent)),
        bandit_interval_minutes=bandit_interval_minutes,
        margin_percent=Decimal(str(margin_percent)),
        bandit_seed=bandit_seed,
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
                material_version_id=v.get("material_version"),
            )
            for i, v in enumerate(variants)
        ]
    )
    record_audit(
        action="campaigns.campaign_created", obj=campaign, actor=actor, api_key=api_key, details={"name": name}
    )
    return campaign


def _locked(campaign_id: int) -> Campaign:
    campaign = Campaign.objects.select_for_update().filter(pk=campaign_id).first()
    if campaign is None:
        raise errors.CampaignNotFound(gettext("No campaign %(id)s.") % {"id": campaign_id})
    return campaign


def _refuse_unless(campaign: Campaign, allowed: Iterable[str], action: str) -> None:
    if campaign.status not in allowed:
        raise errors.InvalidTransition(
            gettext("Cannot %(action)s a campaign that is %(status)s.") % {"action": action, "status": campaign.status},
            status=campaign.status,
        )


def channel_is_configured(kind: str) -> bool:
    if kind == ChannelKind.EMAIL:
        return True
    config = channels.channel_config(kind)
    return bool(config.enabled and config.effective_url())


@transaction.atomic
def save_campaign(*, campaign: Campaign, changed: Sequence[str] = (), actor: Any = None) -> Campaign:
    """Create or edit a campaign's settings field by field (the admin's form); `create_campaign`
    creates one whole, with its variants."""
    created = campaign._state.adding
    campaign.save()
    record_audit(
        action="campaigns.campaign_created" if created else "campaigns.campaign_changed",
        obj=campaign,
        actor=actor,
        details={"fields": list(changed)},
    )
    return campaign


@transaction.atomic
def save_variants(
    *, campaign: Campaign, saved: Sequence[Variant], deleted: Sequence[Variant] = (), actor: Any = None
) -> None:
    """Write a draft campaign's edited variants (new or changed) and delete the removed ones, as
    one audited change; nothing to write, nothing audited."""
    if not saved and not deleted:
        return
    for variant in deleted:
        variant.delete()
    for variant in saved:
        variant.campaign = campaign
        variant.save()
    record_audit(
        action="campaigns.variants_changed",
        obj=campaign,
        actor=actor,
        details={"variants": list(campaign.variants.values_list("name", flat=True))},
    )


@transaction.atomic
def launch_campaign(*, campaign_id: int, actor: Any = None, api_key: Any = None) -> Campaign:
    """Start a draft: at once, at its time, on its cron schedule or on its trigger event."""
    campaign = _locked(campaign_id)
    _refuse_unless(campaign, [CampaignStatus.DRAFT], "launch")
    if not channel_is_configured(campaign.channel):
        raise errors.ChannelNotConfigured(
            gettext("The %(kind)s channel has no gateway URL configured.") % {"kind": campaign.channel}
        )
    if problems := validation.launch_problems(campaign):
        # Refused now, with the fields, rather than discovered later by a worker.
        raise errors.InvalidConfiguration(
            gettext("This campaign cannot work as configured: %(problems)s")
            % {"problems": "; ".join(f"{k}: {v}" for k, v in problems.items())},
            fields=problems,
        )
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
    if campaign.allocation == AllocationKind.THOMPSON and not campaign.allocations.exists():
        _start_allocation(campaign, now=now)
    record_audit(
        action="campaigns.campaign_launched",
        obj=campaign,
        actor=actor,
        api_key=api_key,
        details={"status": campaign.status},
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

    # If the broker is down, the sweeper starts the campaign once its grace period is over.
    transaction.on_commit(
        lambda: publish(f"the start of campaign {campaign_id}", tasks.start_campaign, args=[campaign_id])
    )


@transaction.atomic
def pause_campaign(*, campaign_id: int, actor: Any = None, api_key: Any = None) -> Campaign:
    """Stop sending; pending deliveries wait (workers skip them) until resumed."""
    campaign = _locked(campaign_id)
    _refuse_unless(campaign, [CampaignStatus.RUNNING, CampaignStatus.SCHEDULED], "pause")
    campaign.status = CampaignStatus.PAUSED
    campaign.save(update_fields=["status", "updated_at"])
    if campaign.periodic_task_id:
        type(campaign.periodic_task).objects.filter(pk=campaign.periodic_task_id).update(enabled=False)
    record_audit(action="campaigns.campaign_paused", obj=campaign, actor=actor, api_key=api_key)
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
    # At once: the tasks queued before the pause found the campaign paused and sent nothing.
    queue_pending(campaign_id=campaign.pk, requeue_after=dt.timedelta(0))
    record_audit(action="campaigns.campaign_resumed", obj=campaign, actor=actor, api_key=api_key)
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


def _skip_pending_of_cancelled(*, campaign_ids: Sequence[int]) -> int:
    """Skip the pending messages of cancelled campaigns (some come back to pending after the
    cancel: a retry or a deferral of a batch that was being sent), and give the coupons issued for
    them back to their budgets."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE campaigns_delivery SET status = 'skipped', reason = %s, queued_at = NULL"
            " WHERE campaign_id = ANY(%s) AND status = 'pending' RETURNING coupon_code",
            [CANCELLED_REASON, list(campaign_ids)],
        )
        codes = [row[0] for row in cursor.fetchall()]
    sending.release_coupons([c for c in codes if c])
    return len(codes)


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
    skipped = _skip_pending_of_cancelled(campaign_ids=[campaign.pk])
    record_audit(
        action="campaigns.campaign_cancelled",
        obj=campaign,
        actor=actor,
        api_key=api_key,
        details={"from": previous, "pending_skipped": skipped},
    )
    return campaign


# Where a failed campaign goes back to when retried: the status its failure interrupted.
FAILABLE = (CampaignStatus.RUNNING, CampaignStatus.SCHEDULED, CampaignStatus.AWAITING_ROLLOUT)


def fail_campaign(*, campaign_id: int, step: str, error: BaseException) -> None:
    """A background step of the campaign failed: it stops (nothing more is started or sent) and
    shows why, in the admin and the API, until an operator retries it. Called after the step's own
    transaction (or savepoint) rolled back, so the failure is recorded without the step's work."""
    reason = f"{step}: {error.__class__.__name__}: {error}"[:2000]
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().filter(pk=campaign_id, status__in=FAILABLE).first()
        if campaign is None:
            return
        campaign.status = CampaignStatus.FAILED
        campaign.failure_reason = reason
        campaign.failed_at = timezone.now()
        campaign.save(update_fields=["status", "failure_reason", "failed_at", "updated_at"])
        if campaign.periodic_task_id:
            type(campaign.periodic_task).objects.filter(pk=campaign.periodic_task_id).update(enabled=False)
        record_audit(action="campaigns.campaign_failed", obj=campaign, details={"step": step, "reason": reason})
    logger.error("Campaign %s failed at %s: %s", campaign_id, step, reason)


@transaction.atomic
def retry_campaign(*, campaign_id: int, actor: Any = None, api_key: Any = None) -> Campaign:
    """Try a failed campaign again from where it stopped: a start that failed starts again, a
    recurring or triggered campaign runs on, and pending messages are queued."""
    campaign = _locked(campaign_id)
    _refuse_unless(campaign, [CampaignStatus.FAILED], "retry")
    reason = campaign.failure_reason
    campaign.status = CampaignStatus.RUNNING
    campaign.failure_reason = ""
    campaign.failed_at = None
    campaign.save(update_fields=["status", "failure_reason", "failed_at", "updated_at"])
    if campaign.periodic_task_id:
        type(campaign.periodic_task).objects.filter(pk=campaign.periodic_task_id).update(enabled=True)
    if campaign.phase == CampaignPhase.NONE and campaign.schedule_kind in (ScheduleKind.NOW, ScheduleKind.AT):
        _queue_start(campaign.pk)
    queue_pending(campaign_id=campaign.pk, requeue_after=dt.timedelta(0))
    record_audit(
        action="campaigns.campaign_retried", obj=campaign, actor=actor, api_key=api_key, details={"failure": reason}
    )
    return campaign


# --- audience snapshot -------------------------------------------------------------------------

_ASSIGNMENT_COLUMNS = "(campaign_id, profile_id, user_id, role, variant_id, position, allocation_id, assigned_at)"


def _variant_choice(variants: Sequence[Variant], conditions: Sequence[str]) -> str:
    """SQL choosing a variant: the first whose condition holds, else the last. One variant has no
    condition at all, and `CASE ELSE x END` is not SQL, so it is then the id alone."""
    last = str(int(variants[-1].pk))
    if not conditions:
        return last
    whens = " ".join(f"WHEN {cond} THEN {int(v.pk)}" for cond, v in zip(conditions, variants[:-1], strict=True))
    return f"(CASE {whens} ELSE {last} END)"


def current_allocation(campaign: Campaign) -> Allocation | None:
    """The shares in force for a bandit campaign's newcomers (None for a fixed split)."""
    if campaign.allocation != AllocationKind.THOMPSON:
        return None
    return campaign.allocations.order_by("-valid_from", "-id").first()


def _group_shares(campaign: Campaign, variants: Sequence[Variant]) -> tuple[Allocation | None, Decimal, list[Decimal]]:
    """(the allocation in force or None, the holdout share, each variant's share of the whole
    audience): a bandit's latest shares, else the holdout and the weights."""
    holdout = campaign.holdout_percent / Decimal(100)
    allocation = current_allocation(campaign)
    if allocation is None and campaign.allocation == AllocationKind.THOMPSON:
        # Launched before its first allocation was stored (or the row was lost): start one now.
        allocation = _start_allocation(campaign, now=timezone.now())
    if allocation is not None:
        return allocation, holdout, [Decimal(str(allocation.shares.get(str(v.pk), 0))) for v in variants]
    total_weight = Decimal(sum(v.weight for v in variants) or 1)
    return None, holdout, [(1 - holdout) * v.weight / total_weight for v in variants]


def snapshot_audience(*, campaign: Campaign, mode: str = "quota", only_profile_ids: Sequence[int] | None = None) -> int:
    """Add the segment's current members who are not assigned yet to the campaign's groups, in
    one INSERT ... SELECT. Returns how many were added.

    `quota`: members are ordered by a hash of (campaign, user) and cut into exact shares
    (holdout, pilot, variants by weight), so group sizes match the configuration to within one
    person. `arrival`: for members who arrive a few at a time (triggered campaigns), each goes to
    the group furthest below its share of everyone assigned so far, which keeps every group
    within one person of its share at all times. A bandit campaign uses the shares of its latest
    allocation instead of the weights, and "so far" counts the members assigned under it; each
    member keeps the allocation they were assigned under."""
    variants = list(campaign.variants.order_by("position", "id"))
    if not variants:
        return 0
    sql, params = audience_sql(campaign.segment.definition)
    if only_profile_ids is not None:
        sql += " AND p.id = ANY(%s)"
        params = [*params, list(only_profile_ids)]
    if mode == "arrival":
        return _assign_arrivals(campaign, variants, sql, params)
    allocation, holdout, variant_shares = _group_shares(campaign, variants)
    pilot = (
        campaign.pilot_percent / Decimal(100) if campaign.schedule_kind in (ScheduleKind.NOW, ScheduleKind.AT) else 0
    )
    tested_total = sum(variant_shares) or Decimal(1)
    cumulative, running = [], Decimal(0)
    for share in variant_shares[:-1]:
        running += share
        cumulative.append(running / tested_total)
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
    # hn/pn: sizes of holdout and pilot; k: place within the tested group of size g.
    g_expr = "pn" if pilot else "(n - hn)"
    variant_of = _variant_choice(variants, [f"(rn - hn) < round({g_expr} * %s::numeric)" for _ in variants[:-1]])
    select = (
        ", s AS (SELECT r.*, round(n * %s::numeric) AS hn, round(n * %s::numeric) AS pn FROM r)"
        f" INSERT INTO campaigns_assignment {_ASSIGNMENT_COLUMNS}"
        " SELECT %s, profile_id, user_id,"
        "  CASE WHEN rn < hn THEN 'holdout' WHEN rn < hn + pn THEN 'pilot' ELSE %s END,"
        f"  CASE WHEN rn < hn THEN NULL WHEN %s AND rn >= hn + pn THEN NULL ELSE {variant_of} END,"
        "  rn + %s, %s, %s FROM s"
        " ON CONFLICT (campaign_id, profile_id) DO NOTHING"
    )
    params += [
        holdout,
        pilot,
        campaign.pk,
        rest_role,
        bool(pilot),
        *cumulative,
        offset,
        allocation.pk if allocation else None,
        now,
    ]
    with connection.cursor() as cursor:
        cursor.execute(head + select, params)
        return cursor.rowcount


# Members per group assigned so far: all of a fixed split's, or those under one allocation.
_GROUP_COUNTS_SQL = """
SELECT role, variant_id, count(*) FROM campaigns_assignment
 WHERE campaign_id = %(campaign)s AND (%(allocation)s::bigint IS NULL OR allocation_id = %(allocation)s)
 GROUP BY 1, 2
"""


def _assign_arrivals(campaign: Campaign, variants: list[Variant], sql: str, params: list[Any]) -> int:
    groups: list[tuple[str, int | None]] = [(AssignmentRole.HOLDOUT, None)] + [
        (AssignmentRole.TEST, v.pk) for v in variants
    ]
    with connection.cursor() as cursor:
        # Arrivals of one campaign are assigned one transaction at a time, so each sees the
        # counts the one before it left.
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_ARRIVAL_LOCK, campaign.pk])
        cursor.execute(
            f"SELECT aud.profile_id, aud.user_id FROM ({sql}) aud WHERE NOT EXISTS ("
            " SELECT 1 FROM campaigns_assignment x WHERE x.campaign_id = %s AND x.profile_id = aud.profile_id)"
            " ORDER BY md5(%s || aud.user_id), aud.profile_id",
            [*params, campaign.pk, f"{campaign.pk}:"],
        )
        fresh = cursor.fetchall()
        if not fresh:
            return 0
        # Read under the lock: a reallocation that committed before it is the one in force.
        allocation, holdout, variant_shares = _group_shares(campaign, variants)
        cursor.execute(
            _GROUP_COUNTS_SQL, {"campaign": campaign.pk, "allocation": allocation.pk if allocation else None}
        )
        existing = {
            (role if role == AssignmentRole.HOLDOUT else AssignmentRole.TEST, vid): n for role, vid, n in cursor
        }
        cursor.execute("SELECT count(*) FROM campaigns_assignment WHERE campaign_id = %s", [campaign.pk])
        position = cursor.fetchone()[0]
    shares = [holdout, *variant_shares]
    counts = [existing.get(g, 0) for g in groups]
    n = sum(counts)
    rows = []
    now = timezone.now()
    for profile_id, user_id in fresh:
        deficits = [(n + 1) * share - count for share, count in zip(shares, counts, strict=True)]
        k = max(range(len(groups)), key=lambda i: (deficits[i], -i))
        counts[k] += 1
        role, variant_id = groups[k]
        rows.append(
            Assignment(
                campaign=campaign,
                profile_id=profile_id,
                user_id=user_id,
                role=role,
                variant_id=variant_id,
                position=position,
                allocation=allocation,
                assigned_at=now,
            )
        )
        n += 1
        position += 1
    return len(Assignment.objects.bulk_create(rows, ignore_conflicts=True))


# An advisory lock's first key: "assigning arrivals to a campaign" (the second is its id).
_ARRIVAL_LOCK = 7401
# Likewise: "moving a bandit campaign's shares".
_REALLOCATION_LOCK = 7402


# --- bandit allocation -------------------------------------------------------------------------


def _start_allocation(campaign: Campaign, *, now: dt.datetime) -> Allocation:
    """A bandit's first shares: the weights, until results come in."""
    variants = list(campaign.variants.order_by("position", "id"))
    shares = bandit.initial_shares(
        [(str(v.pk), v.weight) for v in variants], holdout=float(campaign.holdout_percent) / 100
    )
    return Allocation.objects.create(
        campaign=campaign, shares=shares, valid_from=now, reason=AllocationReason.LAUNCH, details={}
    )


def _bandit_rng(campaign: Campaign) -> np.random.Generator:
    # A seeded campaign draws the same shares from the same data at the same step: the number of
    # allocations so far is part of the seed, so successive steps do not repeat one draw.
    if campaign.bandit_seed is None:
        return np.random.default_rng()
    return np.random.default_rng([campaign.bandit_seed, campaign.allocations.count()])


def _out_of_budget(campaign: Campaign, variants: Sequence[Variant], *, now: dt.datetime) -> set[str]:
    """Keys of the variants whose coupon rule cannot issue one more coupon (budget, quantity,
    state or window): newcomers sent to them would get their message without its coupon."""
    from coupons import services as coupon_services

    rule_ids = {v.coupon_rule_id for v in variants if v.coupon_rule_id}
    if not rule_ids:
        return set()
    issuable = coupon_services.rules_able_to_issue(rule_ids=rule_ids, now=now)
    existing = set(coupon_services.existing_rule_ids(rule_ids=rule_ids))
    # A rule that no longer exists costs nothing: its variant's messages go without a coupon, as today.
    return {str(v.pk) for v in variants if v.coupon_rule_id in existing and v.coupon_rule_id not in issuable}


def reallocate(*, campaign_id: int, now: dt.datetime | None = None) -> Allocation | None:
    """One bandit step of a running campaign, under a lock of its own (a second sweeper skips it):
    when its interval has passed since the shares in force, new shares by Thompson sampling on
    the rewards seen so far; between steps, a variant whose coupon budget ran out gives its share
    to the others at once. Returns the new allocation, or None when nothing was due. Raises on
    failure; the caller records it and the shares in force stay."""
    from campaigns.selectors import bandit_arm_data

    now = now or timezone.now()
    with transaction.atomic():
        # Not the campaign's row lock: triggered sends hold it (FOR SHARE) nearly all the time on a
        # busy campaign, and a step must not wait for them nor starve behind them. Arrivals need no
        # lock against a step: each records the allocation it was assigned under.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [_REALLOCATION_LOCK, campaign_id])
            if not cursor.fetchone()[0]:
                return None
        campaign = Campaign.objects.filter(
            pk=campaign_id, status=CampaignStatus.RUNNING, allocation=AllocationKind.THOMPSON
        ).first()
        if campaign is None:
            return None
        variants = list(campaign.variants.order_by("position", "id"))
        current = current_allocation(campaign) or _start_allocation(campaign, now=now)
        spent = _out_of_budget(campaign, variants, now=now)
        starved = sorted(k for k in spent if current.shares.get(k, 0) > 0)
        due = current.valid_from + dt.timedelta(minutes=campaign.bandit_interval_minutes) <= now
        if not due and not starved:
            return None
        holdout = float(campaign.holdout_percent) / 100
        floor = float(campaign.bandit_floor_percent) / 100
        names = {str(v.pk): v.name for v in variants}
        if due:
            arms = [
                dataclasses.replace(a, exhausted=a.key in spent)
                for a in bandit_arm_data(campaign, variants=variants, now=now)
            ]
            shares, p_best = bandit.allocate(arms, holdout=holdout, floor=floor, rng=_bandit_rng(campaign))
            reason = AllocationReason.THOMPSON
            details: dict[str, Any] = {
                "arms": {
                    a.key: {
                        "name": names[a.key],
                        "members": a.members,
                        "orders": a.orders,
                        "net_value": round(a.value_sum, 2),
                        "p_best": p_best.get(a.key),
                        "out_of_budget": a.exhausted,
                    }
                    for a in arms
                },
            }
        else:
            # Within the interval only the budget moves shares: the rest keep their proportions.
            live = [k for k in names if k not in spent]
            if not live:
                raise bandit.AllocationError(
                    "every variant's coupon budget is spent: no variant can be given newcomers"
                )
            kept = bandit.with_floor(
                np.array([float(current.shares.get(k, 0)) for k in live]), floor=floor, total=1 - holdout
            )
            by_key = dict(zip(live, kept, strict=True))
            shares = {bandit.HOLDOUT: holdout} if holdout > 0 else {}
            shares.update({k: float(by_key.get(k, 0.0)) for k in names})
            reason = AllocationReason.BUDGET
            details = {"out_of_budget": [names[k] for k in starved]}
        allocation = Allocation.objects.create(
            campaign=campaign, shares=shares, valid_from=now, reason=reason, details=details
        )
        if campaign.allocation_error:
            Campaign.objects.filter(pk=campaign.pk).update(allocation_error="", allocation_error_at=None)
        record_audit(
            action="campaigns.shares_reallocated",
            obj=campaign,
            details={
                "reason": reason,
                "shares": {names.get(k, k): round(v, 4) for k, v in shares.items()},
                "previous": {names.get(k, k): round(float(v), 4) for k, v in current.shares.items()},
                "out_of_budget": [names[k] for k in sorted(spent)],
            },
        )
        return allocation


def reallocate_bandits(*, now: dt.datetime | None = None) -> int:
    """Sweeper stage: a step of every running bandit campaign. A step that fails leaves its reason
    on the campaign (admin, API) and in the log, keeps the shares in force (sends go on) and is
    tried again at the next sweep. Returns how many campaigns got new shares."""
    now = now or timezone.now()
    changed = 0
    running = Campaign.objects.filter(status=CampaignStatus.RUNNING, allocation=AllocationKind.THOMPSON)
    for campaign_id in running.values_list("pk", flat=True):
        try:
            changed += reallocate(campaign_id=campaign_id, now=now) is not None
        except Exception as exc:
            logger.exception("Reallocation of campaign %s failed; its shares stay as they were.", campaign_id)
            reason = f"{exc.__class__.__name__}: {exc}"[:2000]
            Campaign.objects.filter(pk=campaign_id).update(allocation_error=reason, allocation_error_at=now)
    return changed


# --- deliveries --------------------------------------------------------------------------------

_CONSENT = {
    ChannelKind.PUSH: "p.push_opt_in",
    ChannelKind.SMS: "(p.sms_opt_in AND p.phone <> '')",
    ChannelKind.EMAIL: "(p.email_opt_in AND p.email <> '')",
    # A webhook feeds one of our own systems, which applies its own consent rules.
    ChannelKind.WEBHOOK: "TRUE",
}


def _consents(profile: Profile, channel: str) -> bool:
    """`_CONSENT` for one profile already loaded."""
    if channel == ChannelKind.PUSH:
        return profile.push_opt_in
    if channel == ChannelKind.SMS:
        return profile.sms_opt_in and bool(profile.phone)
    if channel == ChannelKind.EMAIL:
        return profile.email_opt_in and bool(profile.email)
    return True


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
    *,
    campaign_id: int | None = None,
    phase: str | None = None,
    requeue_after: dt.timedelta | None = None,
    ids: Sequence[int] | None = None,
) -> int:
    """Queue `deliver_batch` tasks (after commit) for due pending deliveries not queued recently
    (of one campaign, one phase or the given ids only, where named)."""
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
    if ids is not None:
        due = due.filter(id__in=list(ids))
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
        for i, chunk in enumerate(chunks):
            if not publish(f"a batch of {len(chunk)} deliveries", tasks.deliver_batch, args=[chunk]):
                # The broker is down: the next sweep queues these again instead of waiting for
                # the requeue delay.
                rest = [pk for c in chunks[i:] for pk in c]
                Delivery.objects.filter(id__in=rest, status=DeliveryStatus.PENDING).update(queued_at=None)
                return

    transaction.on_commit(send)
    return len(ids)


def start_send(*, campaign_id: int) -> Campaign | None:
    """Snapshot the audience and create the first phase (pilot, or the full send). Does nothing
    if the send already started, so a repeated task is harmless. If it fails, the campaign is
    marked failed with the reason (and the error goes on to the worker's log)."""
    try:
        return _start_send(campaign_id=campaign_id)
    except Exception as exc:
        fail_campaign(campaign_id=campaign_id, step="start", error=exc)
        raise


@transaction.atomic
def _start_send(*, campaign_id: int) -> Campaign | None:
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


def rollout_risk(results: dict[str, Any], variant_name: str) -> str | None:
    """Why rolling out `variant_name` now is not supported by the always-valid results, or None
    when it is the winner they name."""
    if results["winner"] == variant_name:
        return None
    reason = results.get("winner_reason") or gettext("it is not the winner")
    if results["winner"]:
        return gettext("%(variant)s is not the winner (%(winner)s is); rolling it out may send a worse variant") % {
            "variant": variant_name,
            "winner": results["winner"],
        }
    return gettext(
        "%(variant)s is not shown to be better (%(reason)s); rolling it out now may send a variant that is no "
        "better than the control, the false roll-out that looking at a test until it passes produces"
    ) % {"variant": variant_name, "reason": reason}


@transaction.atomic
def rollout_campaign(
    *,
    campaign_id: int,
    variant_name: str | None = None,
    confirm: bool = False,
    actor: Any = None,
    api_key: Any = None,
) -> Campaign:
    """Send the winner (or the named variant) to the rest of the audience after the pilot.

    The winner is the always-valid one (beats the control and every other variant, Holm), so
    looking at the results and pressing roll out at any time does not inflate false roll-outs.
    A sample-ratio mismatch refuses any roll-out. A named variant that is not the winner is
    refused unless `confirm` is set; then the audit row records the risk that was accepted."""
    from campaigns.selectors import campaign_results

    campaign = _locked(campaign_id)
    _refuse_unless(campaign, [CampaignStatus.RUNNING, CampaignStatus.AWAITING_ROLLOUT], "roll out")
    if campaign.phase != CampaignPhase.PILOT:
        raise errors.NoPilot(gettext("Only a campaign in its pilot phase can be rolled out."), phase=campaign.phase)
    results = campaign_results(campaign)
    if results["srm_blocked"]:
        raise errors.SampleRatioMismatch(
            gettext("Roll-out blocked: %(reason)s.") % {"reason": results["winner_reason"]},
            srm_p_value=results["srm_p_value"],
        )
    if variant_name:
        variant = campaign.variants.filter(name=variant_name).first()
        if variant is None:
            raise errors.VariantNotFound(
                gettext("No variant named %(name)r in this campaign.") % {"name": variant_name}
            )
    else:
        if results["winner"] is None:
            raise errors.NoWinner(
                gettext("No winner yet: %(reason)s; name the variant to roll out (and confirm the risk).")
                % {"reason": results["winner_reason"]}
            )
        variant = campaign.variants.get(name=results["winner"])
    risk = rollout_risk(results, variant.name)
    if risk and not confirm:
        raise errors.ConfirmationRequired(
            gettext("Not supported by the always-valid results: %(risk)s. Repeat with confirm to roll it out anyway.")
            % {"risk": risk},
            risk=risk,
            winner=results["winner"],
        )
    now = timezone.now()
    Assignment.objects.filter(campaign=campaign, role=AssignmentRole.ROLLOUT).update(variant=variant)
    campaign.winner = variant
    campaign.phase = CampaignPhase.ROLLOUT
    campaign.status = CampaignStatus.RUNNING
    campaign.rolled_out_at = now
    campaign.save(update_fields=["winner", "phase", "status", "rolled_out_at", "updated_at"])
    create_deliveries(campaign=campaign, phase=CampaignPhase.ROLLOUT, roles=[AssignmentRole.ROLLOUT])
    queue_pending(campaign_id=campaign.pk, requeue_after=dt.timedelta(0))
    details: dict[str, Any] = {"variant": variant.name, "supported": risk is None, "summary": results["summary"]}
    if risk:
        details.update(confirmed=True, risk=risk)
    record_audit(action="campaigns.campaign_rolled_out", obj=campaign, actor=actor, api_key=api_key, details=details)
    return campaign


def scheduled_run_time(cron: str, now: dt.datetime) -> dt.datetime:
    """The cron time a run started at `now` belongs to: the last one at or before `now`, or the
    next one if it is only moments away (the scheduler's clock may run a little ahead of ours).
    Runs are keyed by this time, so a task delivered again later sends nothing twice."""
    from croniter import croniter

    # Celery's reading of the expression, in numbers croniter reads alike; day_or=False: a day of
    # the month and a day of the week must both match, as Celery's crontab has it.
    plain = validation.celery_cron(cron)
    prev = croniter(plain, now, day_or=False).get_prev(dt.datetime)
    nxt = croniter(plain, prev, day_or=False).get_next(dt.datetime)
    tolerance = min(dt.timedelta(seconds=30), (nxt - prev) / 4)
    return nxt if nxt - now <= tolerance else prev


def run_recurring_send(*, campaign_id: int, run_at: dt.datetime | None = None) -> int:
    """One run of a cron campaign: newcomers are assigned, current members get this run's message
    (its phase is `run:<scheduled time>`). A failing run marks the campaign failed."""
    try:
        return _run_recurring_send(campaign_id=campaign_id, run_at=run_at)
    except Exception as exc:
        fail_campaign(campaign_id=campaign_id, step="recurring run", error=exc)
        raise


@transaction.atomic
def _run_recurring_send(*, campaign_id: int, run_at: dt.datetime | None) -> int:
    campaign = Campaign.objects.select_for_update().filter(pk=campaign_id).first()
    if campaign is None or campaign.status != CampaignStatus.RUNNING or campaign.schedule_kind != ScheduleKind.CRON:
        return 0
    run_at = scheduled_run_time(campaign.cron, run_at or timezone.now())
    # The first run cuts the whole audience into its shares; later runs add the newcomers.
    snapshot_audience(campaign=campaign, mode="arrival" if campaign.assignments.exists() else "quota")
    created = create_deliveries(
        campaign=campaign, phase=f"run:{run_at:%Y%m%d%H%M}", roles=[AssignmentRole.TEST], only_current_members=True
    )
    queue_pending(campaign_id=campaign.pk, requeue_after=dt.timedelta(0))
    return created


# Runs once per ingested batch: written as SQL, since building the same query through the ORM
# costs more than PostgreSQL takes to answer it (newest first, the order the model lists them).
_TRIGGERED_BY_SQL = """
SELECT id, trigger_event FROM campaigns_campaign
WHERE status = %s AND schedule_kind = %s AND trigger_event = ANY(%s::text[])
ORDER BY created_at DESC, id DESC
"""


def on_events_ingested(events: Sequence[Any]) -> None:
    """Ingestion listener: keep the triggers these events fire in the events' own transaction
    (an outbox), and ask a worker to handle them once it commits. A broker that is down fails
    nothing here: the sweeper handles what was kept."""
    names = {e.name for e in events if e.user_id}
    if not names:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            _TRIGGERED_BY_SQL,
            [CampaignStatus.RUNNING.value, ScheduleKind.TRIGGER.value, sorted(names)],
        )
        campaigns = cursor.fetchall()
    if not campaigns:
        return
    from campaigns import tasks

    PendingTrigger.objects.bulk_create(
        [
            PendingTrigger(campaign_id=cid, user_id=e.user_id, event_id=str(e.event_id), at=e.timestamp)
            for cid, trigger in campaigns
            for e in events
            if e.name == trigger and e.user_id
        ]
    )
    transaction.on_commit(lambda: publish("triggered sends", tasks.start_triggered))


def handle_pending_triggers(*, limit: int = 5000) -> int:
    """Turn the kept triggers into deliveries, `limit` at a time, each chunk in one transaction
    with its removal: workers share the work (SKIP LOCKED) and a crash leaves the chunk kept."""
    # Triggers of a campaign that has ended are dropped; those of a paused or failed one wait.
    PendingTrigger.objects.filter(
        campaign__status__in=[
            CampaignStatus.CANCELLED,
            CampaignStatus.SENT,
            CampaignStatus.COMPLETED,
            CampaignStatus.DRAFT,
        ]
    ).delete()
    created = 0
    while True:
        with transaction.atomic():
            chunk = list(
                PendingTrigger.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(campaign__status=CampaignStatus.RUNNING)
                .order_by("id")[:limit]
            )
            if not chunk:
                break
            made, failed = _handle_triggers([[t.campaign_id, t.user_id, t.event_id, t.at.isoformat()] for t in chunk])
            created += made
            # A campaign that failed keeps its triggers, to be handled when it is retried.
            PendingTrigger.objects.filter(pk__in=[t.pk for t in chunk if t.campaign_id not in failed]).delete()
        if len(chunk) < limit:
            break
    return created


def create_triggered_deliveries(*, campaign: Campaign, rows: Sequence[tuple[int, str, dt.datetime]]) -> int:
    """The deliveries of a triggered campaign for `(profile_id, phase, not_before)` rows: the
    people are assigned by hash first (holdout included), then members of the segment outside the
    holdout get one delivery per row's phase (a skipped one without consent), and due ones are
    queued. The unique (campaign, profile, phase) makes a repeated call harmless. Returns how many
    deliveries were created."""
    pids = sorted({r[0] for r in rows})
    if not pids:
        return 0
    snapshot_audience(campaign=campaign, mode="arrival", only_profile_ids=pids)
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
        " ON CONFLICT (campaign_id, profile_id, phase) DO NOTHING RETURNING id"
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
        created = [row[0] for row in cursor.fetchall()]
    # Only what this call created: the campaign's backlog is queued by the sweep, not again here.
    queue_pending(ids=created, requeue_after=dt.timedelta(0))
    return len(created)


def handle_triggers(*, items: Sequence[Sequence[Any]]) -> int:
    """Create the delayed deliveries of triggered campaigns for `[campaign_id, user_id, event_id,
    timestamp]` items: members of the segment only, holdout left out, one per triggering event."""
    return _handle_triggers(items)[0]


@transaction.atomic
def _handle_triggers(items: Sequence[Sequence[Any]]) -> tuple[int, set[int]]:
    """(deliveries created, campaigns whose handling failed and were marked failed)."""
    failed: set[int] = set()
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
        try:
            with transaction.atomic():
                created += create_triggered_deliveries(campaign=campaign, rows=rows)
        except Exception as exc:
            # One broken campaign (its segment no longer compiles, say) must not hold the others'.
            logger.exception("Triggered send of campaign %s failed.", campaign.pk)
            fail_campaign(campaign_id=campaign.pk, step="triggered send", error=exc)
            failed.add(campaign.pk)
    return created, failed


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
        except Exception as exc:
            # Its cursor did not move: the gains are handled when the campaign is retried.
            logger.exception("Tag trigger of campaign %s failed.", campaign_id)
            fail_campaign(campaign_id=campaign_id, step="tag trigger", error=exc)
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


def deliver(*, delivery_ids: Sequence[int]) -> dict[str, int]:
    """Send these deliveries: claim them under a lease, apply quiet hours and the frequency cap,
    post within the channel's rate limit and record each outcome as it returns (see
    `campaigns.sending`). Safe to run twice."""
    return sending.deliver_batch(delivery_ids)


def send_test_message(*, campaign: Campaign, variant: Variant, user_id: str, actor: Any = None) -> channels.Outcome:
    """Send one variant to a staff member's own device now, outside the campaign's counters."""
    profile = Profile.objects.filter(user_id=user_id).first()
    if profile is None:
        raise errors.NoRecipient(gettext("No profile with user id %(user_id)r.") % {"user_id": user_id})
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
        action="campaigns.test_message_sent",
        obj=campaign,
        actor=actor,
        details={"variant": variant.name, "user_id": user_id, "outcome": outcome.kind, "reason": outcome.reason},
    )
    return outcome


def send_material_test(*, version: Any, user_id: str, actor: Any = None) -> tuple[bool, str]:
    """Send a material version, rendered for the staff member's own profile (a sample coupon and
    link, since none is issued), to their device or address now, marked as a test."""
    from materials import selectors as material_selectors

    profile = Profile.objects.filter(user_id=user_id).first()
    if profile is None:
        return False, f"NO_RECIPIENT: no profile with user id {user_id!r}"
    kind = version.material.channel
    # The same consent a campaign's message needs: a test never reaches someone who said no.
    if not _consents(profile, kind):
        return False, f"NO_CONSENT: {user_id!r} has not agreed to {kind} messages (or has no address for it)"
    preview = material_selectors.preview(version=version, profile=profile)
    if preview["error"] or preview["problems"]:
        return False, preview["error"] or "; ".join(p["reason"] for p in preview["problems"])
    rendered = preview["rendered"]
    payload = {
        "delivery_id": None,
        "idempotency_key": f"test-material-{version.pk}-{timezone.now().timestamp()}",
        "campaign": None,
        "variant": str(version),
        "user_id": user_id,
        "channel": kind,
        "title": f"[TEST] {rendered.get('title', '')}".strip(),
        "body": rendered.get("body", ""),
        "url": version.url,
        "test": True,
        **({"html": rendered["html"]} if rendered.get("html") else {}),
    }
    if kind == ChannelKind.EMAIL:
        outcome = channels.send_email(channels.email_connection(), to=profile.email, payload=payload, delivery_id=0)
    else:
        with requests.Session() as session:
            outcome = channels.http_post(session, channels.channel_config(kind), payload)
    record_audit(
        action="campaigns.material_test_message_sent",
        obj=version,
        actor=actor,
        details={"user_id": user_id, "outcome": outcome.kind, "reason": outcome.reason},
    )
    return outcome.kind == channels.SENT, outcome.reason


# --- feedback ----------------------------------------------------------------------------------

RECEIPT_COLUMNS = {"delivered": "delivered_at", "opened": "opened_at", "clicked": "clicked_at", "failed": "failed_at"}


@transaction.atomic
def record_receipts(*, receipts: Sequence[dict[str, Any]]) -> int:
    """Apply provider callbacks. Each timestamp is kept once (the first reported), so replays
    change nothing; `failed` does not undo a delivery already reported delivered."""
    applied = 0
    for kind, column in RECEIPT_COLUMNS.items():
        batch = [r for r in receipts if r["status"] == kind]
        if not batch:
            continue
        # A receipt settles a message of unknown outcome too: it did reach the provider.
        status_sql = {
            "delivered": "CASE WHEN d.status IN ('sent', 'sending', 'unknown') THEN 'delivered' ELSE d.status END",
            "failed": "CASE WHEN d.status IN ('sent', 'sending', 'unknown') THEN 'failed' ELSE d.status END",
        }.get(kind, "CASE WHEN d.status IN ('sent', 'unknown') THEN 'delivered' ELSE d.status END")
        opened = ", opened_at = COALESCE(d.opened_at, t.at)" if kind == "clicked" else ""
        delivered = ", delivered_at = COALESCE(d.delivered_at, t.at)" if kind in ("opened", "clicked") else ""
        # A receipt may come before the worker records its send: it proves the send, and the
        # worker's record later keeps the earlier of the two times.
        sent = ", sent_at = COALESCE(d.sent_at, t.at)" if kind != "failed" else ""
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE campaigns_delivery d SET {column} = COALESCE(d.{column}, t.at), status = {status_sql}"
                f"{opened}{delivered}{sent}"
                " FROM unnest(%s::bigint[], %s::timestamptz[]) AS t(id, at) WHERE d.id = t.id",
                [[r["delivery_id"] for r in batch], [r["at"] for r in batch]],
            )
            applied += cursor.rowcount
    return applied


def record_click(*, delivery_id: int) -> str | None:
    """Note a click on a tracked link; returns where to send the person (the variant's URL)."""
    now = timezone.now()
    record_receipts(receipts=[{"delivery_id": delivery_id, "status": "clicked", "at": now}])
    # A variant that sends a material leads where the material's version says.
    return (
        Variant.objects.filter(deliveries__pk=delivery_id)
        .values_list(Coalesce(NullIf("url", Value("")), "material_version__url"), flat=True)
        .first()
    )


def record_open(*, delivery_id: int) -> None:
    record_receipts(receipts=[{"delivery_id": delivery_id, "status": "opened", "at": timezone.now()}])


# --- sweeper, completion, next iteration -------------------------------------------------------


def sweep(*, stale_after: dt.timedelta | None = None, requeue_after: dt.timedelta | None = None) -> dict[str, int]:
    """Periodic housekeeping (beat, every minute): start scheduled one-offs that are due, start
    the triggered sends of tags gained since the last sweep, put deliveries stuck in `sending` (a
    killed worker) back to pending, queue due pending ones, end pilots and mark campaigns whose
    last message went out as sent (`close_attribution_windows` completes them later). Every step
    is idempotent."""
    now = timezone.now()
    if stale_after is None:
        stale_after = dt.timedelta(seconds=int(_setting("OPSLOOP_DELIVERY_STALE_SECONDS", 300)))
    report = {
        "started": 0,
        "restarted": 0,
        "triggered": 0,
        "tag_triggered": 0,
        "unstuck": 0,
        "unknown": 0,
        "queued": 0,
        "rolled_out": 0,
        "sent": 0,
        "reallocated": 0,
        "failed": 0,
        "stage_errors": 0,
    }

    def stage(name: str, step: Any) -> Any:
        # One stage that breaks (a lock timeout, say) must not keep the others from running.
        try:
            return step()
        except Exception:
            logger.exception("Sweep stage %r failed; the other stages go on.", name)
            report["stage_errors"] += 1
            return 0

    report["started"] = stage("start scheduled", lambda: _start_due_scheduled(now))
    # A launch whose start task never reached a worker (the broker was down) is started here.
    grace = dt.timedelta(seconds=int(_setting("OPSLOOP_START_GRACE_SECONDS", 60)))
    unstarted = Campaign.objects.filter(
        status=CampaignStatus.RUNNING,
        phase=CampaignPhase.NONE,
        schedule_kind__in=[ScheduleKind.NOW, ScheduleKind.AT],
        updated_at__lte=now - grace,
    ).values_list("pk", flat=True)
    for campaign_id in unstarted:
        if _sweep_step(report, campaign_id, lambda cid=campaign_id: start_send(campaign_id=cid)):
            report["restarted"] += 1
    report["triggered"] = stage("event triggers", handle_pending_triggers)
    report["tag_triggered"] = stage("tag triggers", trigger_on_tag_gains)
    report["unknown"], report["unstuck"] = stage("take back", lambda: _take_back_stale(stale_after)) or (0, 0)
    report["queued"] = stage("queue", lambda: queue_pending(requeue_after=requeue_after))
    report["reallocated"] = stage("bandit shares", lambda: reallocate_bandits(now=now))
    for campaign_id in Campaign.objects.filter(status=CampaignStatus.RUNNING, phase=CampaignPhase.PILOT).values_list(
        "pk", flat=True
    ):
        if _sweep_step(report, campaign_id, lambda cid=campaign_id: end_pilot_if_due(campaign_id=cid, now=now)):
            report["rolled_out"] += 1
    for campaign in Campaign.objects.filter(
        status=CampaignStatus.RUNNING, phase__in=[CampaignPhase.FULL, CampaignPhase.ROLLOUT]
    ):
        unfinished = campaign.deliveries.filter(status__in=UNFINISHED)
        if not unfinished.exists() and _sweep_step(
            report, campaign.pk, lambda cid=campaign.pk: mark_sent(campaign_id=cid, if_finished=True)
        ):
            report["sent"] += 1
    return report


def _sweep_step(report: dict[str, int], campaign_id: int, step: Any, *, fail: bool = True) -> bool:
    """Run one campaign's step of the sweep; a failure shows on that campaign and the sweep goes
    on with the others. Truthy result -> True."""
    try:
        return bool(step())
    except Exception as exc:
        logger.exception("Sweep step of campaign %s failed.", campaign_id)
        if fail:
            fail_campaign(campaign_id=campaign_id, step="sweep", error=exc)
            report["failed"] += 1
        return False


def _start_due_scheduled(now: dt.datetime) -> int:
    started = 0
    with transaction.atomic():
        due = Campaign.objects.select_for_update(skip_locked=True).filter(
            status=CampaignStatus.SCHEDULED, send_at__lte=now
        )
        for campaign in due:
            campaign.status = CampaignStatus.RUNNING
            campaign.save(update_fields=["status", "updated_at"])
            _queue_start(campaign.pk)
            started += 1
    return started


@transaction.atomic
def _take_back_stale(stale_after: dt.timedelta) -> tuple[int, int]:
    """Rows whose worker has not renewed its lease for `stale_after` (by the database's clock, the
    one that stamped the lease): a post that was in flight on an at-most-once channel becomes
    `unknown` (it may have gone out); everything else goes back to pending, to be sent again under
    the same key. The pending messages of a cancelled campaign (back from a batch that was being
    sent at the cancel) are skipped, with their coupons. Returns (unknown, back to pending)."""
    cutoff = RawSQL("clock_timestamp() - %s * interval '1 second'", [stale_after.total_seconds()])
    stuck = Delivery.objects.filter(status=DeliveryStatus.SENDING, claimed_at__lte=cutoff)
    stuck.filter(campaign__status=CampaignStatus.CANCELLED).update(
        status=DeliveryStatus.PENDING, lease=None, posting_since=None
    )
    cancelled = set(
        Delivery.objects.filter(status=DeliveryStatus.PENDING, campaign__status=CampaignStatus.CANCELLED)
        .values_list("campaign_id", flat=True)
        .distinct()
    )
    if cancelled:
        _skip_pending_of_cancelled(campaign_ids=list(cancelled))
    at_most_once = Channel.objects.filter(at_most_once=True).values_list("kind", flat=True)
    unknown = stuck.filter(posting_since__isnull=False, channel__in=list(at_most_once)).update(
        status=DeliveryStatus.UNKNOWN, reason=UNKNOWN_REASON, lease=None, posting_since=None, queued_at=None
    )
    unstuck = stuck.update(status=DeliveryStatus.PENDING, queued_at=None, lease=None, posting_since=None)
    return unknown, unstuck


UNKNOWN_REASON = "OUTCOME_UNKNOWN: the worker stopped while posting; check with the provider, then send again or not"


@transaction.atomic
def settle_unknown_deliveries(*, delivery_ids: Sequence[int], was_sent: bool, actor: Any = None) -> int:
    """An operator's verdict on messages whose outcome is unknown, after asking the provider:
    `was_sent` records them as sent; otherwise they are sent again (same idempotency key)."""
    unknown = Delivery.objects.filter(pk__in=list(delivery_ids), status=DeliveryStatus.UNKNOWN)
    if not was_sent:
        # A campaign that ended sends nothing more (its unknown messages keep it open until settled).
        unknown = unknown.filter(campaign__status__in=SENDABLE)
    ids = list(unknown.values_list("pk", flat=True))
    if was_sent:
        Delivery.objects.filter(pk__in=ids).update(status=DeliveryStatus.SENT, sent_at=timezone.now(), reason="")
    else:
        Delivery.objects.filter(pk__in=ids).update(status=DeliveryStatus.PENDING, reason="", queued_at=None)
        queue_pending(ids=ids, requeue_after=dt.timedelta(0))
    for pk in ids:
        record_audit(
            action="campaigns.unknown_delivery_settled", obj=Delivery(pk=pk), actor=actor, details={"sent": was_sent}
        )
    return len(ids)


@transaction.atomic
def end_pilot_if_due(*, campaign_id: int, now: dt.datetime | None = None) -> bool:
    """After the pilot's attribution window: roll the winner out if the campaign allows it and
    the result is significant, else wait for an operator. True if rolled out."""
    from campaigns.selectors import campaign_results

    now = now or timezone.now()
    campaign = _locked(campaign_id)
    if campaign.status != CampaignStatus.RUNNING or campaign.phase != CampaignPhase.PILOT or not campaign.pilot_sent_at:
        return False
    if campaign.deliveries.filter(phase=CampaignPhase.PILOT, status__in=UNFINISHED).exists():
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


# Messages that keep a campaign (or its pilot) open: still to send, or of unknown outcome until an
# operator settles them.
UNFINISHED = (DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.UNKNOWN)


@transaction.atomic
def mark_sent(*, campaign_id: int, actor: Any = None, if_finished: bool = False) -> Campaign | None:
    """Every message is out: the campaign is `sent` and its attribution window opens (conversions
    go on counting until `close_attribution_windows` completes it). `if_finished` (the sweep): only
    a running campaign with nothing left to send, checked under the lock, so a cancel or a failure
    that commits meanwhile is never overwritten. Returns None when that check says no."""
    from campaigns.selectors import campaign_results

    campaign = _locked(campaign_id)
    if campaign.status in (CampaignStatus.SENT, CampaignStatus.COMPLETED):
        return campaign
    if if_finished and (
        campaign.status != CampaignStatus.RUNNING or campaign.deliveries.filter(status__in=UNFINISHED).exists()
    ):
        return None
    campaign.status = CampaignStatus.SENT
    campaign.sent_at = timezone.now()
    # Results as of now: the history and the API read them live until the window closes.
    campaign.results_snapshot = campaign_results(campaign)
    campaign.save()
    if campaign.periodic_task_id:
        type(campaign.periodic_task).objects.filter(pk=campaign.periodic_task_id).update(enabled=False)
    record_audit(action="campaigns.campaign_sent", obj=campaign, actor=actor)
    return campaign


def attribution_window_closed() -> Q:
    """Sent campaigns whose attribution window and its grace period (for events ingested late but
    timestamped inside the window) have ended, by the database's clock."""
    from campaigns.selectors import closed_for_more_than

    return closed_for_more_than(0)


def close_attribution_windows(*, batch_size: int = 50) -> dict[str, int]:
    """Beat task: complete every sent campaign whose attribution window has closed, `batch_size`
    a transaction, then tag its recipients (`apply_feedback`). Campaigns whose window closed while
    no worker ran are completed by the next run; two runs at once share the work (SKIP LOCKED).
    A campaign whose completion fails keeps its status, shows the reason and is tried again."""
    report = {"completed": 0, "feedback": 0, "failed": 0}
    tried: set[int] = set()
    while True:
        with transaction.atomic():
            batch = list(
                Campaign.objects.select_for_update(skip_locked=True)
                .filter(attribution_window_closed())
                .exclude(pk__in=tried)
                .order_by("sent_at", "pk")[:batch_size]
            )
            for campaign in batch:
                tried.add(campaign.pk)
                try:
                    with transaction.atomic():
                        _complete(campaign)
                    report["completed"] += 1
                except Exception as exc:
                    logger.exception("Closing the attribution window of campaign %s failed.", campaign.pk)
                    Campaign.objects.filter(pk=campaign.pk).update(
                        failed_at=timezone.now(),
                        failure_reason=f"{CLOSE_FAILED} (tried again by the next run): {exc}",
                    )
                    report["failed"] += 1
        if len(batch) < batch_size:
            break
    pending = Campaign.objects.filter(status=CampaignStatus.COMPLETED, feedback_applied_at__isnull=True)
    for campaign_id in pending.values_list("pk", flat=True):
        try:
            if apply_feedback(campaign_id=campaign_id) is not None:
                report["feedback"] += 1
        except Exception as exc:
            # No feedback_applied_at: the next run tries again; the reason shows meanwhile.
            logger.exception("Response tags of campaign %s failed; tried again by the next run.", campaign_id)
            Campaign.objects.filter(pk=campaign_id, feedback_applied_at__isnull=True).update(
                failed_at=timezone.now(), failure_reason=f"{FEEDBACK_FAILED} (tried again by the next run): {exc}"
            )
            report["failed"] += 1
    return report


# Prefixes of the failure reasons a later success clears (the status stays what it was).
CLOSE_FAILED = "Closing the attribution window failed"
FEEDBACK_FAILED = "Tagging the responders failed"


def _complete(campaign: Campaign) -> None:
    """Freeze the final results of a sent campaign (locked by the caller) and name its winner."""
    from campaigns.selectors import campaign_results

    campaign.status = CampaignStatus.COMPLETED
    campaign.completed_at = timezone.now()
    results = campaign_results(campaign)
    # The winner is named on the whole window's conversions: any winner from before (named at the
    # last send under the old rule) is re-decided. A rolled-out winner stays: it was sent.
    if campaign.rolled_out_at is None:
        campaign.winner = campaign.variants.filter(name=results["winner"]).first() if results["winner"] else None
    campaign.results_snapshot = results
    if campaign.failure_reason.startswith(CLOSE_FAILED):
        campaign.failure_reason, campaign.failed_at = "", None
    campaign.save()
    record_audit(action="campaigns.campaign_completed", obj=campaign)


@transaction.atomic
def apply_feedback(*, campaign_id: int) -> dict[str, int] | None:
    """Tag recipients by what they did: converted -> `responds_to_<channel>`, redeemed the
    campaign's coupon -> `coupon_sensitive`, ignored the last N messages of the channel in a row
    -> `<channel>_fatigued` (taken away again when they respond). Once per campaign: None when
    another run already applied them (checked under the row lock, so overlapping runs tag once).
    The frozen results are left as they are."""
    from campaigns.selectors import converted_profile_ids, coupon_redeemer_ids
    from profiles import services as profile_services

    campaign = _locked(campaign_id)
    if campaign.feedback_applied_at is not None:
        return None
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
    if campaign.failure_reason.startswith(FEEDBACK_FAILED):
        campaign.failure_reason, campaign.failed_at = "", None
    campaign.save(update_fields=["feedback_applied_at", "failure_reason", "failed_at", "updated_at"])
    return tagged


@transaction.atomic
def clone_campaign(*, campaign_id: int, actor: Any = None, api_key: Any = None) -> Campaign:
    """The next iteration of a sent or completed campaign: same audience and settings, the winner as
    the new control (first variant), the other variants kept as challengers. A cancelled one is
    cloned too (its variants in their order, unless it had a winner): a campaign stopped for a
    mistake is mended and launched again as a draft of its own."""
    source = _locked(campaign_id)
    _refuse_unless(
        source,
        [CampaignStatus.SENT, CampaignStatus.COMPLETED, CampaignStatus.AWAITING_ROLLOUT, CampaignStatus.CANCELLED],
        "clone",
    )
    variants = list(source.variants.order_by("position", "id"))
    winner_id = source.winner_id
    if source.status == CampaignStatus.SENT and winner_id is None and len(variants) > 1:
        # Conversions still count: the winner is the one the always-valid decision names now (it
        # stays valid at every look), and without one the next iteration has no control to start from.
        from campaigns.selectors import campaign_results

        named = campaign_results(source)["winner"]
        winner_id = next((v.pk for v in variants if v.name == named), None) if named else None
        if winner_id is None:
            raise errors.ResultsStillCounting(
                gettext("Cannot clone %(name)s yet: results still counting: no winner yet.") % {"name": source.name},
                status=source.status,
            )
    if winner_id:
        variants.sort(key=lambda v: v.pk != winner_id)
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
                "material_version": v.material_version_id,
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
        allocation=source.allocation,
        bandit_floor_percent=source.bandit_floor_percent,
        bandit_interval_minutes=source.bandit_interval_minutes,
        margin_percent=source.margin_percent,
        bandit_seed=source.bandit_seed,
        parent=source,
        actor=actor,
        api_key=api_key,
    )
    record_audit(
        action="campaigns.campaign_cloned", obj=clone, actor=actor, api_key=api_key, details={"from": source.pk}
    )
    return clone


# --- merges ----------------------------------------------------------------------------------


def on_profiles_merged(into: Profile, merged: Profile) -> None:
    """Merge listener (`profiles.lookup`), inside the merge's transaction. Results find a member's
    conversions through the member's user-id identities, which the merge moved to the survivor:
    the merged member's assignments and deliveries follow them, so the campaign keeps that
    member's conversions (and the survivor's caps see what was sent). Where both were members of
    one campaign the survivor's assignment stands for the person, who is counted once (their
    conversions, the merged user id's included, in the survivor's group): the other assignment
    goes, and its messages not sent yet are skipped (MERGED, their coupons given back), so
    nobody gets one phase's message twice. Sent ones stay on the merged profile as the record of
    what reached that user id.

    Where both were members, none of the merged member's unsent messages of that campaign move:
    they are skipped, so a survivor held out never receives the other group's treatment. A
    message a worker has claimed but not started posting is skipped too (the worker posts only
    rows still `sending` under its lease, so it drops it); one already being posted is left to
    finish. A coupon goes back only where no send or receipt was recorded (as in
    `sending._set_final`).

    Lock order: a merge takes profile rows, then delivery and coupon/redemption rows (the coupons
    listener moves redemptions before coupons), never a coupon rule: refunds and rollbacks lock
    redemption -> coupon -> rule, and bulk issuance holds the rule and then takes profile locks.
    So the coupons given back here are revoked after the merge commits, in their own transaction
    (coupon -> rule, the refunds' order)."""
    both = list(
        Assignment.objects.filter(
            profile_id=merged.pk,
            campaign_id__in=Assignment.objects.filter(profile_id=into.pk).values("campaign_id"),
        ).values_list("campaign_id", flat=True)
    )
    Assignment.objects.filter(profile_id=merged.pk).exclude(campaign_id__in=both).update(
        profile_id=into.pk, user_id=into.user_id
    )
    Assignment.objects.filter(profile_id=merged.pk).delete()
    unsent = "(d.status = 'pending' OR (d.status = 'sending' AND d.posting_since IS NULL))"
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE campaigns_delivery d SET profile_id = %(into)s
            WHERE d.profile_id = %(merged)s
              AND NOT (d.campaign_id = ANY(%(both)s) AND {unsent})
              AND NOT EXISTS (SELECT 1 FROM campaigns_delivery o
                              WHERE o.campaign_id = d.campaign_id AND o.phase = d.phase AND o.profile_id = %(into)s)
            """,
            {"into": into.pk, "merged": merged.pk, "both": both},
        )
        cursor.execute(
            "UPDATE campaigns_delivery d SET status = 'skipped', reason = %(reason)s, queued_at = NULL,"
            f" lease = NULL WHERE d.profile_id = %(merged)s AND {unsent}"
            " RETURNING CASE WHEN d.sent_at IS NULL AND d.delivered_at IS NULL THEN d.coupon_code ELSE '' END",
            {"merged": merged.pk, "reason": f"MERGED: into {into.user_id}"[:500]},
        )
        codes = [row[0] for row in cursor.fetchall() if row[0]]
    if codes:
        transaction.on_commit(lambda: _release_after_merge(codes))


# How long the give-back right after a merge waits for a coupon or rule row another transaction
# holds (a refund, a bulk issuance): the merge's caller (ingestion's identify, say) must not wait
# on it; past this, a worker gives them back.
MERGE_GIVE_BACK_LOCK_TIMEOUT = "2s"


def _release_after_merge(codes: list[str]) -> None:
    try:
        give_back_coupons(codes=codes, lock_timeout=MERGE_GIVE_BACK_LOCK_TIMEOUT)
    except Exception as exc:
        # The messages stay skipped (MERGED); only the budget their coupons hold is not back yet.
        # A worker gives it back (retrying with a back-off, each try on the health page's task list).
        log_failure(logger, f"Giving back {len(codes)} coupon(s) of messages skipped by a merge", exc)
        from campaigns import tasks

        publish(f"merged coupons ({len(codes)})", tasks.give_back_coupons, args=[codes], countdown=5)


@transaction.atomic
def give_back_coupons(*, codes: list[str], lock_timeout: str | None = None) -> None:
    """Give the coupons of messages that will never be sent back to their rules' budgets (those
    still available; a second call finds none). `lock_timeout` (a PostgreSQL interval such as
    "2s") bounds the wait for rows another transaction holds; past it, this raises."""
    if lock_timeout is not None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [lock_timeout])
    sending.release_coupons(codes)
