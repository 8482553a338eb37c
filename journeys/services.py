"""Journeys: writing the steps, launching, advancing each person's run, and leaving on the goal.

Advancing takes due runs under `FOR UPDATE SKIP LOCKED`, so workers share them and never move
one person twice at once; a send step creates the person's delivery for that step with the
campaigns' unique key `(campaign, profile, phase)` and hands it to the campaigns' sending, so
every guarantee of a single send (leases, idempotency keys, retries, the frequency cap, quiet
hours, per-person rendering) holds for each step.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from django.utils.translation import gettext

from access.services import record_audit
from campaigns import sending, validation
from campaigns.models import (
    AllocationKind,
    Assignment,
    AssignmentRole,
    Campaign,
    CampaignPhase,
    CampaignStatus,
    ChannelKind,
    Delivery,
    DeliveryStatus,
    ScheduleKind,
)
from config.celery import publish
from config.failures import log_failure
from journeys import conditions, errors
from journeys.models import BranchOn, JourneyRun, JourneyStep, RunStatus, StepKind, StepVisit
from profiles.models import Identity, IdentityKind, Profile, ProfileTag
from tracking.models import Event

logger = logging.getLogger(__name__)

JOURNEY_PHASE = CampaignPhase.JOURNEY
# How often a run waiting for an event looks for it: the safety net, since a stored event moves
# the runs waiting for it on right after its commit (and exits happen in its transaction).
EVENT_POLL = dt.timedelta(minutes=1)
# A run whose advance fails is tried again after 1, 2, 4 ... minutes, at most an hour apart: a
# step that cannot run (a material that no longer renders, a broken trait) must not fill the log
# every minute, and a passing fault (the database restarting) heals within a minute or two.
FAILURE_BACKOFF_MAX = dt.timedelta(hours=1)


def failure_backoff(failures: int) -> dt.timedelta:
    return min(FAILURE_BACKOFF_MAX, dt.timedelta(minutes=2 ** max(0, min(failures - 1, 10))))


MAX_WAIT_MINUTES = 60 * 24 * 90
PROFILE_TRAITS = ("name", "gender", "region", "city", "timezone")
# Journeys that are over: a goal event no longer changes anything in them.
ENDED = (CampaignStatus.SENT, CampaignStatus.COMPLETED, CampaignStatus.CANCELLED)


def _consents(profile: Profile, channel: str) -> bool:
    # The same rule as the campaigns' single sends (their _CONSENT statement).
    if channel == ChannelKind.PUSH:
        return profile.push_opt_in
    if channel == ChannelKind.SMS:
        return profile.sms_opt_in and bool(profile.phone)
    if channel == ChannelKind.EMAIL:
        return profile.email_opt_in and bool(profile.email)
    return True


def step_problems(campaign: Campaign, steps: Sequence[dict[str, Any]]) -> dict[str, str]:
    """`{"steps[i]": reason}` for steps that cannot run."""
    problems: dict[str, str] = {}
    if not steps:
        return {"steps": gettext("A journey has at least one step.")}
    variants = set(campaign.variants.values_list("pk", flat=True))
    for i, s in enumerate(steps):
        key = f"steps[{i}]"
        kind = s.get("kind")
        goto = s.get("goto")
        if kind not in StepKind.values:
            problems[key] = gettext("kind: one of %(kinds)s.") % {"kinds": ", ".join(StepKind.values)}
        elif kind == StepKind.SEND and s.get("variant") is not None and s.get("variant") not in variants:
            problems[key] = gettext(
                "variant: a send step names one of this campaign's variants (or none: each person's arm)."
            )
        elif kind == StepKind.WAIT and not 1 <= (s.get("wait_minutes") or 0) <= MAX_WAIT_MINUTES:
            problems[key] = gettext("A wait lasts 1 to %(max)d minutes.") % {"max": MAX_WAIT_MINUTES}
        elif kind == StepKind.WAIT_EVENT and (not s.get("event") or not (s.get("wait_minutes") or 0) >= 1):
            problems[key] = gettext("Waiting for an event needs the event and a timeout (wait_minutes, at least 1).")
        elif kind == StepKind.BRANCH:
            on = s.get("branch_on")
            if on not in BranchOn.values:
                problems[key] = gettext("branch_on: one of %(values)s.") % {"values": ", ".join(BranchOn.values)}
            elif (on == BranchOn.EVENT and not s.get("event")) or (on == BranchOn.TAG and not s.get("tag")):
                problems[key] = gettext("Branching on %(on)s needs the %(on)s name.") % {"on": on}
            elif on == BranchOn.TRAIT and not s.get("trait"):
                problems[key] = gettext("trait: branching on a trait needs the trait's name.")
            elif on == BranchOn.TRAIT and (
                reason := conditions.operand_problem(s.get("trait_operator") or "", str(s.get("trait_value") or ""))
            ):
                problems[key] = reason
            elif on == BranchOn.VARIANT and s.get("variant") not in variants:
                problems[key] = gettext("variant: branching on the variant names one of this campaign's variants.")
            elif goto is None:
                problems[key] = gettext("A branch needs goto: the step to go to when the condition holds.")
        if key not in problems and goto is not None and not 0 <= goto <= len(steps):
            problems[key] = gettext("goto is a step position from 0 to %(n)d (past the last: the end).") % {
                "n": len(steps)
            }
    if not problems and (start := _loop_without_wait(steps)) is not None:
        problems[f"steps[{start}]"] = gettext(
            "These steps loop back here without a wait (or a wait for an event) on the way: a person would "
            "stay in the journey for ever. Put a wait in the loop."
        )
    return problems


def _loop_without_wait(steps: Sequence[dict[str, Any]]) -> int | None:
    """The first step of a loop that never waits, or None. Waits break loops (the run rests);
    sends go on to the next step; branches to their goto or the next step."""
    n = len(steps)

    def successors(i: int) -> list[int]:
        s = steps[i]
        if s["kind"] in (StepKind.WAIT, StepKind.WAIT_EVENT):
            return []
        nxt = [i + 1]
        if s["kind"] == StepKind.BRANCH and s.get("goto") is not None:
            nxt.append(s["goto"])
        return [j for j in nxt if j < n]

    state = [0] * n  # 0 unseen, 1 on the path, 2 done
    for root in range(n):
        if state[root]:
            continue
        stack = [(root, iter(successors(root)))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            for j in it:
                if state[j] == 1:
                    return j
                if state[j] == 0:
                    state[j] = 1
                    stack.append((j, iter(successors(j))))
                    break
            else:
                state[node] = 2
                stack.pop()
    return None


def single_send_problems(campaign: Campaign) -> dict[str, str]:
    """A campaign with steps is launched as a journey, never as one send of its variants."""
    if JourneyStep.objects.filter(campaign_id=campaign.pk).exists():
        return {"status": "This campaign has journey steps: launch it from its journey (Journeys > launch)."}
    return {}


def launch_problems(campaign: Campaign) -> dict[str, str]:
    """The campaigns' launch checks (segment, channel ready, approved materials, shares, ...),
    except the one refusing a campaign with steps as a single send; and a journey starts at
    launch: a scheduled or triggered campaign would also send its own single messages."""
    problems = validation.launch_problems(campaign, without=[single_send_problems])
    # Its people are split once, at launch, by the weights: there is no pilot to roll out from
    # and no later newcomer for a bandit to move.
    if campaign.pilot_percent:
        problems["pilot_percent"] = "A journey has no pilot: set it to 0 (the holdout measures the journey)."
    if campaign.allocation != AllocationKind.FIXED:
        problems["allocation"] = "A journey splits its people at launch by the variants' weights (a fixed split)."
    if campaign.schedule_kind != ScheduleKind.NOW:
        problems["schedule_kind"] = (
            f"A journey starts when launched (schedule {ScheduleKind.NOW.label!r}), not {campaign.schedule_kind!r}."
        )
    return problems


@transaction.atomic
def set_steps(
    *, campaign: Campaign, steps: Sequence[dict[str, Any]], actor: Any = None, api_key: Any = None
) -> list[JourneyStep]:
    """Replace a draft campaign's steps (position = order given)."""
    campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
    if campaign.status != CampaignStatus.DRAFT:
        raise errors.NotADraft(gettext("Steps change only while the campaign is a draft."))
    if problems := step_problems(campaign, steps):
        raise errors.InvalidSteps("; ".join(f"{k}: {v}" for k, v in problems.items()), fields=problems)
    JourneyStep.objects.filter(campaign=campaign).delete()
    rows = JourneyStep.objects.bulk_create(
        [
            JourneyStep(
                campaign=campaign,
                position=i,
                kind=s["kind"],
                variant_id=s.get("variant"),
                wait_minutes=s.get("wait_minutes") or 0,
                event=s.get("event") or "",
                branch_on=s.get("branch_on") or "",
                tag=s.get("tag") or "",
                trait=s.get("trait") or "",
                trait_operator=s.get("trait_operator") or "",
                trait_value=str(s.get("trait_value") or ""),
                goto=s.get("goto"),
            )
            for i, s in enumerate(steps)
        ]
    )
    record_audit(
        action="journeys.steps_changed", obj=campaign, actor=actor, api_key=api_key, details={"steps": len(rows)}
    )
    return rows


@transaction.atomic
def launch_journey(
    *, campaign: Campaign, actor: Any = None, api_key: Any = None, now: dt.datetime | None = None
) -> int:
    """Start a draft journey: its segment's members are assigned as a single send's would be (the
    holdout, and the variants by weight); all but the holdout enter at the first step, each with
    their arm. Returns how many entered."""
    now = now or timezone.now()
    campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
    if campaign.status != CampaignStatus.DRAFT:
        raise errors.NotADraft(gettext("The campaign is %(status)s, not a draft.") % {"status": campaign.status})
    steps = list(
        campaign.journey_steps.values(
            "kind",
            "variant",
            "wait_minutes",
            "event",
            "branch_on",
            "tag",
            "trait",
            "trait_operator",
            "trait_value",
            "goto",
        )
    )
    if problems := step_problems(campaign, steps):
        raise errors.InvalidSteps("; ".join(f"{k}: {v}" for k, v in problems.items()), fields=problems)
    if problems := launch_problems(campaign):
        raise errors.InvalidConfiguration(
            gettext("This journey cannot work as configured: %(problems)s")
            % {"problems": "; ".join(f"{k}: {v}" for k, v in problems.items())},
            fields=problems,
        )
    campaign.status = CampaignStatus.RUNNING
    campaign.phase = JOURNEY_PHASE
    campaign.launched_at = now
    campaign.save(update_fields=["status", "phase", "launched_at", "updated_at"])
    from campaigns import services as campaign_services

    campaign_services.snapshot_audience(campaign=campaign)
    arms = (
        Assignment.objects.filter(campaign=campaign)
        .exclude(role=AssignmentRole.HOLDOUT)
        .values_list("profile_id", "user_id", "variant_id")
    )
    runs = JourneyRun.objects.bulk_create(
        [
            JourneyRun(
                campaign=campaign,
                profile_id=pk,
                user_id=uid,
                variant_id=variant_id,
                step_started_at=now,
                wake_at=now,
                entered_at=now,
            )
            for pk, uid, variant_id in arms
        ],
        ignore_conflicts=True,
        batch_size=2000,
    )
    record_audit(
        action="journeys.journey_launched", obj=campaign, actor=actor, api_key=api_key, details={"entered": len(runs)}
    )
    from journeys import tasks

    transaction.on_commit(lambda: publish("the journey's first steps", tasks.advance_journeys))
    return len(runs)


# --- advancing ---------------------------------------------------------------------------------


def advance_due(*, now: dt.datetime | None = None, limit: int = 500) -> int:
    """Move every due run as far as it goes now, `limit` runs per transaction, then complete
    the journeys nobody is in any more. Returns how many runs moved."""
    moved = 0
    while True:
        done = _advance_chunk(now=now or timezone.now(), limit=limit)
        moved += done
        if done < limit:
            break
    complete_finished()
    return moved


def complete_finished() -> int:
    """Complete running journeys whose runs have all ended and whose messages are all settled
    (the campaigns' completion: results frozen, feedback applied after the attribution window)."""
    from campaigns import services as campaign_services

    finished = (
        Campaign.objects.filter(status=CampaignStatus.RUNNING, phase=JOURNEY_PHASE)
        .exclude(journey_runs__status=RunStatus.ACTIVE)
        .values_list("pk", flat=True)
    )
    completed = 0
    for campaign_id in finished:
        try:
            if campaign_services.mark_sent(campaign_id=campaign_id, if_finished=True):
                completed += 1
        except Exception:
            # One journey's failure shows in the log and is tried again next minute; the others go on.
            logger.exception("Completing journey %s failed; it is tried again at the next advance.", campaign_id)
    return completed


def advance_runs(*, run_ids: Sequence[int], now: dt.datetime | None = None) -> int:
    """Move these runs as far as they go now, whenever they were due (a run whose awaited event
    was just stored). One another worker holds is left to it. Returns how many moved."""
    moved = 0
    ids = list(run_ids)
    for start in range(0, len(ids), 500):
        moved += _advance_chunk(now=now or timezone.now(), limit=500, run_ids=ids[start : start + 500])
    return moved


def retry_failed_runs(*, campaign: Campaign, actor: Any = None, api_key: Any = None) -> int:
    """Try the journey's failing runs again now rather than after their back-off; audited.
    Returns how many were made due; workers advance them (`advance_runs`, and the minute's sweep
    should a task not reach one). Only a running journey's runs move: NotRunning otherwise."""
    if campaign.status != CampaignStatus.RUNNING:
        raise errors.NotRunning(
            gettext("The journey is %(status)s: its runs move again once it runs.")
            % {"status": campaign.get_status_display()}
        )
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE journeys_journeyrun SET wake_at = %s"
                " WHERE campaign_id = %s AND status = %s AND last_error <> '' RETURNING id",
                [timezone.now(), campaign.pk, RunStatus.ACTIVE],
            )
            ids = sorted(row[0] for row in cursor.fetchall())
        if not ids:
            return 0
        record_audit(
            actor=actor,
            api_key=api_key,
            action="journeys.failed_runs_retried",
            obj=campaign,
            details={"runs": len(ids)},
        )
        from journeys import tasks as journey_tasks

        def queue() -> None:
            for start in range(0, len(ids), RETRY_TASK_RUNS):
                part = ids[start : start + RETRY_TASK_RUNS]
                publish(f"journey retries ({len(part)})", journey_tasks.advance_runs, args=[part])

        transaction.on_commit(queue)
    return len(ids)


# Runs per advance task of a retry: one task message stays small however many runs fail.
RETRY_TASK_RUNS = 500


def _advance_chunk(*, now: dt.datetime, limit: int, run_ids: Sequence[int] | None = None) -> int:
    created: list[int] = []
    with transaction.atomic():
        due = JourneyRun.objects.select_for_update(skip_locked=True, of=("self",)).filter(
            status=RunStatus.ACTIVE, campaign__status=CampaignStatus.RUNNING
        )
        due = due.filter(pk__in=list(run_ids)) if run_ids is not None else due.filter(wake_at__lte=now)
        runs = list(due.select_related("campaign", "profile").order_by("wake_at", "id")[:limit])
        steps: dict[int, dict[int, JourneyStep]] = {}
        for run in runs:
            if run.campaign_id not in steps:
                steps[run.campaign_id] = {
                    s.position: s for s in JourneyStep.objects.filter(campaign_id=run.campaign_id)
                }
            try:
                # One run's failure (a step that cannot run) must not hold back every run behind
                # it: it is rolled back alone, and the run keeps the reason (admin, API, health
                # page), is logged with its id, and is tried again after a back-off.
                with transaction.atomic():
                    created += _advance(run, steps[run.campaign_id], now)
            except Exception as exc:
                reason = log_failure(logger, f"Advancing journey run {run.pk} (step {run.position})", exc)
                failures = run.failures + 1  # the row is locked: the count read with it stands
                JourneyRun.objects.filter(pk=run.pk).update(
                    failures=failures, last_error=reason, failed_at=now, wake_at=now + failure_backoff(failures)
                )
        if run_ids is not None and len(runs) < len(run_ids):
            skipped = sorted(set(run_ids) - {run.pk for run in runs})
            logger.info("Journey runs %s were not advanced now (ended, or held by another worker).", skipped)
        if created:
            from campaigns import tasks as campaign_tasks

            ids = list(created)
            transaction.on_commit(
                lambda: publish(f"journey sends ({len(ids)})", campaign_tasks.deliver_batch, args=[ids])
            )
    return len(runs)


def _enter(run: JourneyRun, position: int, now: dt.datetime, steps: dict[int, JourneyStep]) -> None:
    run.position = position
    run.step_started_at = now
    run.wake_at = now
    if position in steps:
        StepVisit.objects.get_or_create(run=run, step=steps[position], defaults={"at": now})


def _advance(run: JourneyRun, steps: dict[int, JourneyStep], now: dt.datetime) -> list[int]:
    """Walk one run until it must wait or ends; the deliveries created on the way."""
    created: list[int] = []
    if run.position in steps:
        StepVisit.objects.get_or_create(run=run, step=steps[run.position], defaults={"at": run.step_started_at})
    # Each step at most once per pass: a branch that loops back without a wait waits a minute.
    for _ in range(len(steps) + 1):
        step = steps.get(run.position)
        if step is None:
            run.status, run.ended_at, run.wake_at = RunStatus.COMPLETED, now, None
            break
        if step.kind == StepKind.SEND:
            if pk := _send(run, step, now):
                created.append(pk)
            _enter(run, run.position + 1, now, steps)
        elif step.kind == StepKind.WAIT:
            due = run.step_started_at + dt.timedelta(minutes=step.wait_minutes)
            if now < due:
                run.wake_at = due
                break
            _enter(run, run.position + 1, now, steps)
        elif step.kind == StepKind.WAIT_EVENT:
            timeout = run.step_started_at + dt.timedelta(minutes=step.wait_minutes)
            if _did(run, step.event, since=run.step_started_at):
                _enter(run, run.position + 1, now, steps)
            elif now >= timeout:
                _enter(run, step.goto if step.goto is not None else run.position + 1, now, steps)
            else:
                run.wake_at = min(timeout, now + EVENT_POLL)
                break
        elif step.kind == StepKind.BRANCH:
            _enter(run, step.goto if _holds(run, step) else run.position + 1, now, steps)
    else:
        run.wake_at = now + EVENT_POLL
    fields = ["position", "status", "step_started_at", "wake_at", "ended_at"]
    if run.failures or run.last_error:
        run.failures, run.last_error = 0, ""  # it moves again: the failure is over (failed_at stays)
        fields += ["failures", "last_error"]
    run.save(update_fields=fields)
    return created


def _send(run: JourneyRun, step: JourneyStep, now: dt.datetime) -> int | None:
    """The person's delivery for this step: created once (the campaigns' unique key), skipped
    without consent as a single send would be."""
    campaign = run.campaign
    variant_id = step.variant_id or run.variant_id
    if variant_id is None:
        # A run started before people were given an arm, at a step that sends the arm's variant.
        logger.warning("Journey run %s has no variant for step %s; nothing is sent.", run.pk, step.position)
        return None
    consent = _consents(run.profile, campaign.channel)
    delivery, made = Delivery.objects.get_or_create(
        campaign=campaign,
        profile=run.profile,
        phase=step.phase,
        defaults={
            "variant_id": variant_id,
            "user_id": run.user_id,
            "channel": campaign.channel,
            "status": DeliveryStatus.PENDING if consent else DeliveryStatus.SKIPPED,
            "reason": "" if consent else "NO_CONSENT",
            "not_before": now,
        },
    )
    return delivery.pk if made and consent else None


def _did(run: JourneyRun, event: str, *, since: dt.datetime) -> bool:
    return Event.objects.filter(user_id=run.user_id, name=event, timestamp__gte=since).exists()


def _holds(run: JourneyRun, step: JourneyStep) -> bool:
    if step.branch_on == BranchOn.EVENT:
        return _did(run, step.event, since=run.entered_at)
    if step.branch_on == BranchOn.TAG:
        return ProfileTag.objects.filter(profile_id=run.profile_id, tag__name=step.tag).exists()
    if step.branch_on == BranchOn.VARIANT:
        return run.variant_id is not None and run.variant_id == step.variant_id
    profile = run.profile
    value = getattr(profile, step.trait) if step.trait in PROFILE_TRAITS else (profile.traits or {}).get(step.trait)
    return conditions.trait_holds(value, step.trait_operator, step.trait_value)


# --- leaving on the goal -----------------------------------------------------------------------


# What a batch of event names asks of the journeys, in one statement (one round trip per ingested
# batch, where two ORM queries cost several times their execution in building and waiting):
# - the journeys whose goal is one of the names (paused or failed ones too: their runs wait to go
#   on, and must not message a person who already converted once resumed), newest first;
# - the running journeys' steps that wait for one of the names.
# Neither part reads what leaving on the goal writes, so reading both before the exits is the
# same as reading the steps after them.
_ASKED_SQL = """
SELECT 'goal', c.id, c.goal_event, NULL::int, c.created_at
FROM campaigns_campaign c
WHERE c.phase = %(journey)s AND c.goal_event = ANY(%(names)s::text[]) AND c.status <> ALL(%(ended)s::text[])
UNION ALL
SELECT 'wait', s.campaign_id, s.event, s.position, c.created_at
FROM journeys_journeystep s JOIN campaigns_campaign c ON c.id = s.campaign_id
WHERE s.kind = %(wait_event)s AND s.event = ANY(%(names)s::text[]) AND c.status = %(running)s
"""


def on_events_ingested(events: Sequence[Any]) -> None:
    """Ingestion listener: a goal event ends its person's runs in the journeys that name it, and
    cancels their messages not yet posted, in the event's own transaction (so at once, well
    within the minute; one being posted at that moment still goes)."""
    by_name: dict[str, set[str]] = {}
    for e in events:
        if e.user_id:
            users = by_name.get(e.name)
            if users is None:
                by_name[e.name] = {e.user_id}
            else:
                users.add(e.user_id)
    if not by_name:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            _ASKED_SQL,
            {
                "journey": JOURNEY_PHASE.value,
                "names": sorted(by_name),
                "ended": [status.value for status in ENDED],
                "wait_event": StepKind.WAIT_EVENT.value,
                "running": CampaignStatus.RUNNING.value,
            },
        )
        asked = cursor.fetchall()
    if not asked:
        return
    # Newest journey first, the order the model lists them in.
    goals = sorted((row for row in asked if row[0] == "goal"), key=lambda row: (row[4], row[1]), reverse=True)
    for _part, campaign_id, goal, _position, _created in goals:
        exit_runs(campaign_id=campaign_id, user_ids=sorted(by_name[goal]), reason=f"EXITED: {goal}")
    steps = [(campaign_id, position, name) for part, campaign_id, name, position, _created in asked if part == "wait"]
    _wake_waiting(by_name, steps)


def _wake_waiting(by_name: dict[str, set[str]], steps: list[tuple[int, int, str]]) -> None:
    """Runs at a step waiting for one of these events, of a person who just did it, advance once
    the event is committed (a task), not at the next minute's sweep."""
    # The steps come with the journeys (usually none awaits these names), then the runs by
    # (campaign, user id), which their index serves.
    if not steps:
        return
    awaited = {(campaign_id, position): event for campaign_id, position, event in steps}
    rows = JourneyRun.objects.filter(
        status=RunStatus.ACTIVE,
        campaign_id__in={campaign_id for campaign_id, _position, _event in steps},
        user_id__in=sorted(set().union(*by_name.values())),
    ).values_list("pk", "campaign_id", "position", "user_id")
    ids = [
        pk
        for pk, campaign_id, position, user_id in rows
        if (event := awaited.get((campaign_id, position))) and user_id in by_name[event]
    ]
    if not ids:
        return
    from journeys import tasks

    transaction.on_commit(
        lambda: publish(f"journey runs waiting for an event ({len(ids)})", tasks.advance_runs, args=[ids])
    )


def on_profiles_merged(into: Profile, merged: Profile) -> None:
    """Merge listener (`profiles.lookup`), inside the merge's transaction, after the campaigns'
    one moved the deliveries. The person keeps one run per journey: where the survivor has none,
    the merged profile's run becomes the survivor's; where both had one, the survivor's goes on
    and the other ends (MERGED), its step messages left on the merged profile skipped (their
    coupons given back), so nobody gets a step's message twice. Where the survivor is in the
    campaign's holdout the person stays held out: the merged profile's run ends (MERGED) and its
    step messages the campaigns' listener moved to the survivor are skipped too."""
    held_out = list(
        Assignment.objects.filter(profile_id=into.pk, role=AssignmentRole.HOLDOUT).values_list("campaign_id", flat=True)
    )
    JourneyRun.objects.filter(profile_id=merged.pk).exclude(
        campaign_id__in=JourneyRun.objects.filter(profile_id=into.pk).values("campaign_id")
    ).exclude(campaign_id__in=held_out).update(profile_id=into.pk, user_id=into.user_id)
    ended = list(JourneyRun.objects.filter(profile_id=merged.pk).values_list("campaign_id", flat=True))
    if not ended:
        return
    JourneyRun.objects.filter(profile_id=merged.pk, status=RunStatus.ACTIVE).update(
        status=RunStatus.MERGED, ended_at=timezone.now(), wake_at=None
    )
    moved_to_holdout = [c for c in ended if c in set(held_out)]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE campaigns_delivery SET status = 'skipped', reason = %s, queued_at = NULL"
            " WHERE status = 'pending' AND phase LIKE 'step:%%'"
            " AND ((campaign_id = ANY(%s) AND profile_id = %s) OR (campaign_id = ANY(%s) AND profile_id = %s))"
            " RETURNING coupon_code",
            [f"MERGED: into {into.user_id}"[:500], ended, merged.pk, moved_to_holdout, into.pk],
        )
        codes = [row[0] for row in cursor.fetchall()]
    sending.release_coupons([c for c in codes if c])


def _people_of(user_ids: Sequence[str]) -> list[int]:
    """The profiles these user ids belong to now: after a merge, the survivor's."""
    return list(
        Identity.objects.filter(kind=IdentityKind.USER_ID, value__in=list(user_ids)).values_list(
            "profile_id", flat=True
        )
    )


def exit_runs(*, campaign_id: int, user_ids: Sequence[str], reason: str) -> int:
    """End these people's active runs, then skip every step message of theirs not yet posted,
    also one queued by a run that finished its last step meanwhile. Returns the runs ended."""
    now = timezone.now()
    # A run that walked its last step while that step's message is still to be posted (pending,
    # or held by a worker) left on the goal too: marked so, its message is dropped when claimed.
    unsettled = Delivery.objects.filter(
        campaign_id=OuterRef("campaign_id"),
        profile_id=OuterRef("profile_id"),
        status__in=[DeliveryStatus.PENDING, DeliveryStatus.SENDING],
        phase__startswith="step:",
    )
    # By person, not by the user id the run was started with: a merged person's run moved to
    # the survivor, and either of their user ids reaches the goal.
    people = _people_of(user_ids)
    exited = (
        JourneyRun.objects.filter(campaign_id=campaign_id)
        .filter(Q(user_id__in=list(user_ids)) | Q(profile_id__in=people))
        .filter(Q(status=RunStatus.ACTIVE) | Q(Exists(unsettled), status=RunStatus.COMPLETED))
        .update(status=RunStatus.EXITED, ended_at=now, wake_at=None)
    )
    # After the runs' update: an advancer that held one of them has committed its messages, so
    # this statement sees them. A message a worker holds now is dropped when claimed again
    # (`exited_deliveries`); one being posted at this moment still goes.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE campaigns_delivery SET status = 'skipped', reason = %s, queued_at = NULL"
            " WHERE campaign_id = %s AND (user_id = ANY(%s) OR profile_id = ANY(%s)) AND status = 'pending'"
            " AND phase LIKE 'step:%%' RETURNING coupon_code",
            [reason[:500], campaign_id, list(user_ids), people],
        )
        codes = [row[0] for row in cursor.fetchall()]
    # Their coupons go back to the rule's budget, as a cancelled campaign's do.
    sending.release_coupons([c for c in codes if c])
    return exited


def exited_deliveries(rows: list[Delivery]) -> dict[int, str]:
    """Claim check (campaigns' sending): the step messages of people whose run left on the goal,
    with the reason, so one deferred, retried or handed back after the goal is never posted."""
    steps = [d for d in rows if d.phase.startswith("step:")]
    if not steps:
        return {}
    exited = set(
        JourneyRun.objects.filter(
            status=RunStatus.EXITED,
            campaign_id__in={d.campaign_id for d in steps},
            profile_id__in={d.profile_id for d in steps},
        ).values_list("campaign_id", "profile_id")
    )
    return {d.pk: f"EXITED: {d.campaign.goal_event}" for d in steps if (d.campaign_id, d.profile_id) in exited}
