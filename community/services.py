"""Writes of the community app: keeping membership from ingested events, following identity
merges, assigning accounts and groups, and seeding demo communities."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Group
from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext

from access.services import record_audit
from community import scoring, selectors
from community.errors import AccountNotFound, GroupNotFound, NotAnOperator, RunInProgress, RunNotFailed, RunNotFound
from community.models import (
    COMMUNITY_EVENTS,
    CONTACT_ADDED,
    JOINED,
    LEFT,
    MESSAGE,
    REQUIRED_PROPERTY,
    AppliedCommunityEvent,
    CommunityGroup,
    Contact,
    ContributionScore,
    Dimension,
    MemberActivity,
    Membership,
    MembershipChange,
    OperatorAccount,
    ScoreDimension,
    ScoreRun,
    ScoreSubject,
)
from config.celery import publish
from config.failures import log_failure
from profiles.models import Identity, IdentityKind, Profile

logger = logging.getLogger(__name__)

# --- keeping communities from events ----------------------------------------------------------

_MARK_APPLIED_SQL = """
INSERT INTO community_appliedcommunityevent (event_id)
SELECT unnest(%(ids)s::uuid[])
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id::text
"""

_CONTACT_CONFLICT = """
ON CONFLICT (account_id, profile_id) DO UPDATE SET
    channel = CASE WHEN EXCLUDED.added_at < c.added_at THEN EXCLUDED.channel ELSE c.channel END,
    added_at = LEAST(c.added_at, EXCLUDED.added_at)
"""
_CONTACTS_SQL = (
    """
INSERT INTO community_contact AS c (account_id, profile_id, added_at, channel)
SELECT * FROM unnest(%(accounts)s::bigint[], %(profiles)s::bigint[], %(at)s::timestamptz[], %(channels)s::text[])
"""
    + _CONTACT_CONFLICT
)
_MERGE_CONTACTS_SQL = (
    """
INSERT INTO community_contact AS c (account_id, profile_id, added_at, channel)
SELECT account_id, %(into)s, added_at, channel FROM community_contact WHERE profile_id = %(merged)s
"""
    + _CONTACT_CONFLICT
)

# Two rows of one person in one group combine: counts add, first/last times widen, and the state
# comes from whichever join or leave happened later (a late-arriving old event changes nothing).
# A row without any join or leave (messages only) says the person is in the group.
_MEMBERSHIP_CONFLICT = """
ON CONFLICT (group_id, profile_id) DO UPDATE SET
    is_member = CASE
        WHEN EXCLUDED.state_at IS NOT NULL AND (m.state_at IS NULL OR EXCLUDED.state_at >= m.state_at)
            THEN EXCLUDED.is_member
        WHEN EXCLUDED.state_at IS NULL AND m.state_at IS NULL THEN m.is_member OR EXCLUDED.is_member
        ELSE m.is_member END,
    state_at = GREATEST(m.state_at, EXCLUDED.state_at),
    first_joined_at = LEAST(m.first_joined_at, EXCLUDED.first_joined_at),
    joins = m.joins + EXCLUDED.joins,
    leaves = m.leaves + EXCLUDED.leaves,
    messages = m.messages + EXCLUDED.messages,
    first_message_at = LEAST(m.first_message_at, EXCLUDED.first_message_at),
    last_message_at = GREATEST(m.last_message_at, EXCLUDED.last_message_at)
"""
_MEMBERSHIPS_SQL = (
    """
INSERT INTO community_membership AS m (group_id, profile_id, is_member, state_at, first_joined_at, joins, leaves,
                                       messages, first_message_at, last_message_at)
SELECT * FROM unnest(%(groups)s::bigint[], %(profiles)s::bigint[], %(is_member)s::boolean[],
                     %(state_at)s::timestamptz[], %(first_joined_at)s::timestamptz[], %(joins)s::int[],
                     %(leaves)s::int[], %(messages)s::int[], %(first_message_at)s::timestamptz[],
                     %(last_message_at)s::timestamptz[])
"""
    + _MEMBERSHIP_CONFLICT
)
_MERGE_MEMBERSHIPS_SQL = (
    """
INSERT INTO community_membership AS m (group_id, profile_id, is_member, state_at, first_joined_at, joins, leaves,
                                       messages, first_message_at, last_message_at)
SELECT group_id, %(into)s, is_member, state_at, first_joined_at, joins, leaves, messages, first_message_at,
       last_message_at
FROM community_membership WHERE profile_id = %(merged)s
"""
    + _MEMBERSHIP_CONFLICT
)

_ACTIVITY_CONFLICT = """
ON CONFLICT (group_id, profile_id, day) DO UPDATE SET messages = a.messages + EXCLUDED.messages
"""
_ACTIVITY_SQL = (
    """
INSERT INTO community_memberactivity AS a (group_id, profile_id, day, messages)
SELECT * FROM unnest(%(groups)s::bigint[], %(profiles)s::bigint[], %(days)s::date[], %(messages)s::int[])
"""
    + _ACTIVITY_CONFLICT
)
_MERGE_ACTIVITY_SQL = (
    """
INSERT INTO community_memberactivity AS a (group_id, profile_id, day, messages)
SELECT group_id, %(into)s, day, messages FROM community_memberactivity WHERE profile_id = %(merged)s
"""
    + _ACTIVITY_CONFLICT
)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _id(value: Any) -> str:
    """An account or group id as sent (the analyses match it against the events' properties
    exactly); blank ones were refused by validation."""
    return value if isinstance(value, str) and value.strip() else ""


def _resolve_profiles(events: Sequence[Any]) -> dict[tuple[str, str], int]:
    """(kind, value) -> profile id for the events' user ids and anonymous ids, as every analysis
    resolves an event: its `user_id` identity first, else its `anonymous_id` one. Identities move
    with merges, so this is the surviving profile."""
    users = {e.user_id for e in events if e.user_id}
    anons = {e.anonymous_id for e in events if e.anonymous_id and not e.user_id}
    rows = Identity.objects.filter(kind=IdentityKind.USER_ID, value__in=users).values_list(
        "kind", "value", "profile_id"
    )
    found = {(k, v): p for k, v, p in rows}
    if anons:
        rows = Identity.objects.filter(kind=IdentityKind.ANONYMOUS_ID, value__in=anons)
        found.update({(k, v): p for k, v, p in rows.values_list("kind", "value", "profile_id")})
    return found


def _ensure(model: type[OperatorAccount] | type[CommunityGroup], firsts: dict[str, datetime]) -> dict[str, int]:
    """Ids of the accounts or groups named, creating unknown ones unassigned (no operator) so an
    admin sees them in the list to assign."""
    if not firsts:
        return {}
    model.objects.bulk_create(
        [model(external_id=x, first_seen_at=at) for x, at in sorted(firsts.items())], ignore_conflicts=True
    )
    return dict(model.objects.filter(external_id__in=list(firsts)).values_list("external_id", "id"))


def apply_community_events(*, events: Sequence[Any]) -> int:
    """Keep contacts, memberships, join/leave history and activity from community events (any
    objects with the fields of `tracking.hooks.StoredEvent`), inside the caller's transaction.

    Events whose person is not known yet (an anonymous id that no `identify` has tied to a user)
    are left unapplied: `apply_pending_community_events` picks them up once it is. An event
    applied before is skipped, so replays never count twice. Returns the events applied."""
    events = [e for e in events if e.name in COMMUNITY_EVENTS and _id(e.properties.get(REQUIRED_PROPERTY[e.name]))]
    if not events:
        return 0
    account_firsts: dict[str, datetime] = {}
    group_firsts: dict[str, datetime] = {}
    for e in events:
        firsts = account_firsts if e.name == CONTACT_ADDED else group_firsts
        key = _id(e.properties[REQUIRED_PROPERTY[e.name]])
        firsts[key] = min(firsts.get(key, e.timestamp), e.timestamp)
    accounts = _ensure(OperatorAccount, account_firsts)
    groups = _ensure(CommunityGroup, group_firsts)

    found = _resolve_profiles(events)

    def profile_of(e: Any) -> int | None:
        if e.user_id:
            return found.get((IdentityKind.USER_ID, e.user_id))
        return found.get((IdentityKind.ANONYMOUS_ID, e.anonymous_id))

    resolved = [(e, p) for e in events if (p := profile_of(e)) is not None]
    if not resolved:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(_MARK_APPLIED_SQL, {"ids": sorted({str(e.event_id) for e, _ in resolved})})
        fresh = {row[0] for row in cursor.fetchall()}
    resolved = [(e, p) for e, p in resolved if str(e.event_id) in fresh]
    # One batch may hold the same event id once only (ingestion dedupes); a replay may not.
    seen: set[str] = set()
    resolved = [(e, p) for e, p in resolved if not (str(e.event_id) in seen or seen.add(str(e.event_id)))]
    if not resolved:
        return 0
    resolved.sort(key=lambda pair: (pair[0].timestamp, str(pair[0].event_id)))

    contacts: dict[tuple[int, int], tuple[datetime, str]] = {}
    members: dict[tuple[int, int], dict[str, Any]] = {}
    activity: dict[tuple[int, int, Any], int] = {}
    changes: list[MembershipChange] = []
    for e, profile_id in resolved:
        if e.name == CONTACT_ADDED:
            key = (accounts[_id(e.properties[REQUIRED_PROPERTY[e.name]])], profile_id)
            if key not in contacts:  # sorted by time: the first is the earliest
                contacts[key] = (e.timestamp, _text(e.properties.get("channel"))[:64])
            continue
        group_id = groups[_id(e.properties[REQUIRED_PROPERTY[e.name]])]
        row = members.setdefault(
            (group_id, profile_id),
            {
                "is_member": True,
                "state_at": None,
                "first_joined_at": None,
                "joins": 0,
                "leaves": 0,
                "messages": 0,
                "first_message_at": None,
                "last_message_at": None,
            },
        )
        if e.name in (JOINED, LEFT):
            row["is_member"], row["state_at"] = e.name == JOINED, e.timestamp
            action = MembershipChange.Action.JOINED if e.name == JOINED else MembershipChange.Action.LEFT
            changes.append(
                MembershipChange(
                    group_id=group_id, profile_id=profile_id, action=action, at=e.timestamp, event_id=e.event_id
                )
            )
            if e.name == JOINED:
                row["joins"] += 1
                row["first_joined_at"] = row["first_joined_at"] or e.timestamp
            else:
                row["leaves"] += 1
        elif e.name == MESSAGE:
            row["messages"] += 1
            row["first_message_at"] = row["first_message_at"] or e.timestamp
            row["last_message_at"] = e.timestamp
            day = e.timestamp.astimezone(UTC).date()
            activity[(group_id, profile_id, day)] = activity.get((group_id, profile_id, day), 0) + 1

    with connection.cursor() as cursor:
        if contacts:
            keys = sorted(contacts)  # a fixed order: concurrent batches lock rows alike
            cursor.execute(
                _CONTACTS_SQL,
                {
                    "accounts": [a for a, _ in keys],
                    "profiles": [p for _, p in keys],
                    "at": [contacts[k][0] for k in keys],
                    "channels": [contacts[k][1] for k in keys],
                },
            )
        if members:
            keys = sorted(members)
            cols = (
                "is_member",
                "state_at",
                "first_joined_at",
                "joins",
                "leaves",
                "messages",
                "first_message_at",
                "last_message_at",
            )
            params = {c: [members[k][c] for k in keys] for c in cols}
            cursor.execute(
                _MEMBERSHIPS_SQL, {"groups": [g for g, _ in keys], "profiles": [p for _, p in keys], **params}
            )
        if activity:
            keys = sorted(activity)
            cursor.execute(
                _ACTIVITY_SQL,
                {
                    "groups": [k[0] for k in keys],
                    "profiles": [k[1] for k in keys],
                    "days": [k[2] for k in keys],
                    "messages": [activity[k] for k in keys],
                },
            )
    if changes:
        MembershipChange.objects.bulk_create(changes, ignore_conflicts=True)
    return len(resolved)


def on_events_ingested(events: Sequence[Any]) -> None:
    """Ingestion listener (registered by CommunityConfig.ready)."""
    apply_community_events(events=events)


def follow_late_merges() -> int:
    """Move rows still kept on a merged profile to its survivor: rows written by an ingestion
    batch that resolved the person just before a concurrent merge committed (the merge listener
    could not see them yet). Returns the profiles moved."""
    touched = (
        Membership.objects.values("profile_id")
        .union(Contact.objects.values("profile_id"))
        .union(MemberActivity.objects.values("profile_id"))
    )
    merged = list(
        Profile.objects.filter(merged_into__isnull=False, pk__in=touched).select_related("merged_into").order_by("pk")
    )
    for profile in merged:
        on_profiles_merged(profile.merged_into, profile)
    return len(merged)


@transaction.atomic
def apply_pending_community_events(*, batch: int = 5000) -> int:
    """Apply the stored community events not applied yet: those whose person only became known
    later (an `identify` tying their anonymous id to a user). Then follow merges that raced with
    ingestion. Nightly and idempotent."""
    from tracking.models import Event

    follow_late_merges()
    applied = 0
    last_id = 0
    while True:
        chunk = list(
            Event.objects.filter(name__in=COMMUNITY_EVENTS, id__gt=last_id)
            .exclude(event_id__in=AppliedCommunityEvent.objects.values("event_id"))
            .order_by("id")
            .only("id", "event_id", "name", "timestamp", "user_id", "anonymous_id", "properties")[:batch]
        )
        if not chunk:
            return applied
        applied += apply_community_events(events=chunk)
        last_id = chunk[-1].id


@transaction.atomic
def rebuild_community(*, actor: AbstractBaseUser | None = None) -> int:
    """Recompute contacts, memberships, history and activity from the stored events (after a
    bug fix or a data repair). Accounts, groups and their assignments are kept."""
    for model in (MemberActivity, MembershipChange, Membership, Contact, AppliedCommunityEvent):
        model.objects.all().delete()
    applied = apply_pending_community_events()
    record_audit(actor=actor, action="community.membership_rebuilt", details={"applied": applied})
    return applied


def on_profiles_merged(into: Profile, merged: Profile) -> None:
    """Merge listener: the merged profile's contacts, memberships, history and activity move to
    the surviving one, combined with what it already had (inside the merge's transaction)."""
    params = {"into": into.pk, "merged": merged.pk}
    with connection.cursor() as cursor:
        cursor.execute(_MERGE_CONTACTS_SQL, params)
        cursor.execute(_MERGE_MEMBERSHIPS_SQL, params)
        cursor.execute(_MERGE_ACTIVITY_SQL, params)
    for model in (Contact, Membership, MemberActivity):
        model.objects.filter(profile_id=merged.pk).delete()
    MembershipChange.objects.filter(profile_id=merged.pk).update(profile_id=into.pk)


# --- assigning accounts and groups ----------------------------------------------------------


def _operator(operator_id: int | None) -> Any:
    if operator_id is None:
        return None
    user = get_user_model().objects.filter(pk=operator_id).first()
    if user is None or not user.is_staff:
        raise NotAnOperator(
            f"User {operator_id} is not a staff member: only staff can run accounts and groups.", field="operator"
        )
    return user


@transaction.atomic
def assign_account(
    *, account_id: int, operator_id: int | None, actor: AbstractBaseUser | None = None, api_key: Any = None
) -> OperatorAccount:
    """Give an account to an operator (None: back to unassigned); audited."""
    account = OperatorAccount.objects.select_for_update().filter(pk=account_id).first()
    if account is None:
        raise AccountNotFound(f"No operator account {account_id}.")
    previous = account.operator_id
    account.operator = _operator(operator_id)
    account.save(update_fields=["operator"])
    record_audit(
        actor=actor,
        api_key=api_key,
        action="community.account_assigned",
        obj=account,
        details={"from": previous, "to": operator_id},
    )
    return account


@transaction.atomic
def assign_group(
    *, group_id: int, operator_id: int | None, actor: AbstractBaseUser | None = None, api_key: Any = None
) -> CommunityGroup:
    """Give a group to an operator (None: back to unassigned); audited."""
    group = CommunityGroup.objects.select_for_update().filter(pk=group_id).first()
    if group is None:
        raise GroupNotFound(f"No community group {group_id}.")
    previous = group.operator_id
    group.operator = _operator(operator_id)
    group.save(update_fields=["operator"])
    record_audit(
        actor=actor,
        api_key=api_key,
        action="community.group_assigned",
        obj=group,
        details={"from": previous, "to": operator_id},
    )
    return group


# --- demo -------------------------------------------------------------------------------------


DEMO_APPS = ("meituan", "taobao", "pinduoduo", "douyin", "xiaohongshu")


@dataclass
class SeededCommunity:
    operators: list[Any]
    teams: list[Group]
    accounts: list[OperatorAccount]
    groups: list[CommunityGroup]
    events: int


def seed_demo_community(
    *,
    user_ids: Sequence[str],
    now: datetime | None = None,
    operators: int = 6,
    teams: Sequence[int] = (2, 4),
    groups_per_operator: int = 2,
    apps: Sequence[str] = DEMO_APPS,
    seed: int = 19,
) -> SeededCommunity:
    """Operators (staff users `operator-1`...), teams (auth groups `Community team A`... of the
    given sizes), one contact account and `groups_per_operator` groups per operator, and events
    for the given existing users sent through ingestion like the product's: about 60% view the
    in-product community page and add an operator, most of those join a group, some message and a
    few leave; everyone gets an `installed_apps` list (90 days back, outside the retention
    windows). Deterministic for a `seed`; running it again stores nothing twice (same event ids)."""
    import random

    from tracking.services import ingest_events

    if sum(teams) > operators:
        raise ValueError("the teams hold more operators than `operators`")
    now = now or timezone.now()
    rng = random.Random(seed)
    User = get_user_model()
    staff = []
    for i in range(1, operators + 1):
        user, _ = User.objects.get_or_create(
            username=f"operator-{i}", defaults={"is_staff": True, "first_name": f"Operator {i}"}
        )
        staff.append(user)
    team_groups, start = [], 0
    for n, size in enumerate(teams):
        team, _ = Group.objects.get_or_create(name=f"Community team {chr(ord('A') + n)}")
        team.user_set.add(*staff[start : start + size])
        team_groups.append(team)
        start += size
    accounts, groups = [], []
    for i, user in enumerate(staff, start=1):
        account, _ = OperatorAccount.objects.get_or_create(
            external_id=f"wecom-op-{i}", defaults={"operator": user, "name": f"{user.first_name} (WeCom)"}
        )
        accounts.append(account)
        for g in range(1, groups_per_operator + 1):
            group, _ = CommunityGroup.objects.get_or_create(
                external_id=f"group-{i}-{g}", defaults={"operator": user, "name": f"{user.first_name} group {g}"}
            )
            groups.append(group)
    namespace = uuid.UUID(int=seed)
    events: list[dict[str, Any]] = []
    latest = now - timedelta(minutes=1)

    def event(name: str, user_id: str, at: datetime, n: int, context: dict | None = None, **properties: Any) -> None:
        events.append(
            {
                "event_id": str(uuid.uuid5(namespace, f"{user_id}:{name}:{n}")),
                "name": name,
                "user_id": user_id,
                "timestamp": min(at, latest).isoformat(),
                "properties": properties,
                **({"context": context} if context else {}),
            }
        )

    channels = ("in_app_page", "parcel_card", "sms")
    page = {"url": f"https://shop.example.com{selectors.community_page_path()}"}
    for user_id in user_ids:
        if apps:
            mine = sorted(rng.sample(list(apps), rng.randint(0, min(3, len(apps)))))
            event("installed_apps", user_id, now - timedelta(days=90), 0, apps=mine)
        if rng.random() > 0.6:
            continue
        i = rng.randrange(len(staff))
        added = now - timedelta(days=rng.randint(1, 84), minutes=rng.randint(0, 1440))
        event("page_view", user_id, added - timedelta(minutes=10), 0, context=page)
        event(CONTACT_ADDED, user_id, added, 0, account_id=accounts[i].external_id, channel=rng.choice(channels))
        if rng.random() > 0.8:
            continue
        group = groups[i * groups_per_operator + rng.randrange(groups_per_operator)]
        joined = added + timedelta(hours=rng.randint(1, 48))
        event(JOINED, user_id, joined, 0, group_id=group.external_id)
        for n in range(rng.choice((0, 0, 1, 3, 8))):
            event(MESSAGE, user_id, joined + timedelta(hours=rng.randint(1, 24 * 20)), n, group_id=group.external_id)
        if rng.random() < 0.15:
            event(LEFT, user_id, joined + timedelta(days=rng.randint(1, 30)), 0, group_id=group.external_id)
    stored = 0
    for start in range(0, len(events), 1000):
        stored += ingest_events(events=events[start : start + 1000], now=now).accepted
    return SeededCommunity(operators=staff, teams=team_groups, accounts=accounts, groups=groups, events=stored)


# --- contribution scores ----------------------------------------------------------------------


def ensure_dimensions() -> list[ScoreDimension]:
    """The score dimensions with their default weight of 1 where an admin has not set one."""
    ScoreDimension.objects.bulk_create([ScoreDimension(key=key) for key in Dimension.values], ignore_conflicts=True)
    return list(ScoreDimension.objects.order_by("key"))


@transaction.atomic
def set_dimension_weight(
    *, key: str, weight: Decimal, actor: AbstractBaseUser | None = None, api_key: Any = None
) -> ScoreDimension:
    """Change one dimension's weight (0 leaves it out of the score); audited. Later runs use it."""
    ensure_dimensions()
    dimension = ScoreDimension.objects.select_for_update().get(key=key)
    previous = dimension.weight
    dimension.weight = weight
    dimension.full_clean()
    dimension.save(update_fields=["weight"])
    record_audit(
        actor=actor,
        api_key=api_key,
        action="community.score_dimension_changed",
        obj=dimension,
        details={"from": str(previous), "to": str(weight)},
    )
    return dimension


def first_of_month(value: date | datetime) -> date:
    return date(value.year, value.month, 1)


def teams_of(operator_ids: Sequence[int]) -> dict[Group, list[int]]:
    """Teams: staff groups (auth groups other than the access roles) with an operator in them;
    their members are all their active staff users, operators or not."""
    from access.roles import ROLES

    teams: dict[Group, list[int]] = {}
    candidates = Group.objects.exclude(name__in=ROLES).filter(user__in=operator_ids).distinct().order_by("name")
    for team in candidates:
        teams[team] = sorted(team.user_set.filter(is_staff=True, is_active=True).values_list("pk", flat=True))
    return teams


@transaction.atomic
def request_score_run(*, month: date, requested_by: AbstractBaseUser | None = None, api_key: Any = None) -> ScoreRun:
    """Queue the scores of `month` (the admin's button, the API); visible at once as queued."""
    from community import tasks

    month = first_of_month(month)
    if ScoreRun.objects.filter(month=month, status__in=[ScoreRun.Status.QUEUED, ScoreRun.Status.RUNNING]).exists():
        raise RunInProgress(
            gettext("A score run for %(month)s is already queued or running.") % {"month": f"{month:%Y-%m}"}
        )
    run = ScoreRun.objects.create(
        month=month, requested_by=requested_by if getattr(requested_by, "is_authenticated", False) else None
    )
    record_audit(
        actor=requested_by,
        api_key=api_key,
        action="community.score_run_requested",
        obj=run,
        details={"month": f"{month:%Y-%m}"},
    )
    transaction.on_commit(
        lambda: publish(
            f"contribution score run {run.pk}", tasks.recompute_contribution_scores, kwargs={"run_id": run.pk}
        )
    )
    return run


def compute_contribution_scores(
    *, run_id: int | None = None, month: date | None = None, now: datetime | None = None
) -> ScoreRun:
    """Score every operator and team for a month (default: the previous month, nightly) and
    replace that month's scores, in one transaction. A finished run is returned untouched, so a
    redelivered task is harmless. A failure leaves the run failed with its reason (traceback in
    the log) and raises again; `retry_score_run` queues it once more."""
    now = now or timezone.now()
    if run_id is None:
        month = first_of_month(month or (first_of_month(now) - timedelta(days=1)))
        run = ScoreRun.objects.create(month=month, requested_at=now)
    else:
        run = ScoreRun.objects.get(pk=run_id)
        if run.status in (ScoreRun.Status.DONE, ScoreRun.Status.FAILED):
            return run
    ScoreRun.objects.filter(pk=run.pk).update(status=ScoreRun.Status.RUNNING, started_at=timezone.now())
    try:
        with transaction.atomic():
            operators, teams, weights = _score_month(run=run)
    except Exception as exc:
        ScoreRun.objects.filter(pk=run.pk).update(
            status=ScoreRun.Status.FAILED,
            finished_at=timezone.now(),
            error=log_failure(logger, f"contribution score run {run.pk} ({run.month:%Y-%m})", exc),
        )
        raise
    ScoreRun.objects.filter(pk=run.pk).update(
        status=ScoreRun.Status.DONE,
        finished_at=timezone.now(),
        operators=operators,
        teams=teams,
        weights=weights,
        error="",
    )
    run.refresh_from_db()
    return run


# Two runs of one month (a retry while the nightly one runs) take turns: each replaces the
# month's scores, so interleaved they would collide on the one-score-per-month constraints.
_SCORE_MONTH_LOCK = "SELECT pg_advisory_xact_lock(%(namespace)s, %(month)s)"
_LOCK_NAMESPACE = 1919


def _score_month(*, run: ScoreRun) -> tuple[int, int, dict[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(_SCORE_MONTH_LOCK, {"namespace": _LOCK_NAMESPACE, "month": run.month.toordinal()})
    weights = {d.key: d.weight for d in ensure_dimensions()}
    raw, sources = selectors.score_inputs(month=run.month)
    ContributionScore.objects.filter(month=run.month).delete()
    if not raw:
        return 0, 0, {k: str(w) for k, w in weights.items()}
    rows = []
    for s in scoring.score_subjects(raw, weights):
        rows.append(
            ContributionScore(
                run=run,
                month=run.month,
                subject=ScoreSubject.OPERATOR,
                operator_id=s.key,
                members=1,
                score=s.score,
                rank=s.rank,
                breakdown=_breakdown(s, weights),
                sources=sources.get(s.key, {}),
            )
        )
    teams = teams_of(list(raw))
    if teams:
        zero = {d: Decimal(0) for d in Dimension.values}
        team_raw = {
            team.pk: scoring.per_member_mean([raw.get(m, zero) for m in members], Dimension.values)
            for team, members in teams.items()
        }
        by_pk = {team.pk: (team, members) for team, members in teams.items()}
        for s in scoring.score_subjects(team_raw, weights):
            team, members = by_pk[s.key]
            rows.append(
                ContributionScore(
                    run=run,
                    month=run.month,
                    subject=ScoreSubject.TEAM,
                    team=team,
                    members=len(members),
                    score=s.score,
                    rank=s.rank,
                    breakdown=_breakdown(s, weights),
                    sources={
                        "members": [
                            {"operator": m, "raw": {d: str(v) for d, v in raw.get(m, zero).items()}} for m in members
                        ]
                    },
                )
            )
    ContributionScore.objects.bulk_create(rows)
    return len(raw), len(teams), {k: str(w) for k, w in weights.items()}


def _breakdown(score: scoring.SubjectScore, weights: dict[str, Decimal]) -> dict[str, Any]:
    return {
        d: {
            "raw": str(score.raw[d].quantize(Decimal("0.01"))),
            "percentile": round(score.percentiles[d], 2) if d in score.percentiles else None,
            "weight": str(weights[d]),
        }
        for d in weights
    }


@transaction.atomic
def retry_score_run(*, run_id: int, actor: AbstractBaseUser | None = None, api_key: Any = None) -> ScoreRun:
    """Queue a failed run again (admin action, API); it starts over (the failed one wrote nothing)."""
    from community import tasks

    run = ScoreRun.objects.select_for_update().filter(pk=run_id).first()
    if run is None:
        raise RunNotFound(f"No score run {run_id}.")
    if run.status != ScoreRun.Status.FAILED:
        raise RunNotFailed(
            gettext("Score run %(id)s is %(status)s: only a failed run is retried.")
            % {"id": run_id, "status": run.status}
        )
    previous = run.error
    run.status, run.error, run.started_at, run.finished_at = ScoreRun.Status.QUEUED, "", None, None
    run.save(update_fields=["status", "error", "started_at", "finished_at"])
    record_audit(
        actor=actor,
        api_key=api_key,
        action="community.score_run_retried",
        obj=run,
        details={"previous_error": previous},
    )
    transaction.on_commit(
        lambda: publish(
            f"contribution score run {run.pk}", tasks.recompute_contribution_scores, kwargs={"run_id": run.pk}
        )
    )
    return run
