"""Writes of the profiles app: one function per business action."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import OperationalError, connection, transaction
from django.utils import timezone
from django.utils.text import slugify
from psycopg import sql as pgsql

from access.services import record_audit
from config.celery import publish
from config.failures import log_failure
from profiles import rules
from profiles.errors import RuleNotRunnable, TagRuleNotFailed, TagRuleNotFound
from profiles.models import (
    Identity,
    IdentityKind,
    LookupChannel,
    LookupRecord,
    Profile,
    ProfileMerge,
    ProfileTag,
    Tag,
    TagChange,
    TagChangeAction,
    TagRule,
    TagRuleKind,
    TagRunStatus,
    TagSource,
)
from profiles.normalize import KNOWN_TRAITS, normalize_identity
from profiles.selectors import find_profiles, profile_for_user_id, validate_lookup_query
from tracking.ids import id_in_runs, join_runs, runs_of

logger = logging.getLogger(__name__)


@transaction.atomic
def ensure_profile(*, user_id: str) -> Profile:
    """The profile of `user_id`, created (with its `user_id` identity) if the product never sent
    us this user before. Safe under concurrent calls for the same id."""
    if profile := profile_for_user_id(user_id):
        return profile
    profile, _ = Profile.objects.get_or_create(user_id=user_id)
    Identity.objects.bulk_create(
        [Identity(profile=profile, kind=IdentityKind.USER_ID, value=user_id)], ignore_conflicts=True
    )
    return profile_for_user_id(user_id) or profile


# --- ingestion ------------------------------------------------------------------------------

# The batch's events are read back by id from the rows just stored (same transaction, still in
# shared buffers) instead of travelling again as arrays: the driver quotes array parameters in
# Python, which cost more than the statements themselves. The id ranges are written into the
# statement as constants, so the planner sees how few rows they hold and probes the indexes of
# profiles and identities instead of scanning them. One statement, one round trip:
# - the backlog of first/last seen (applied later by `update_seen_times`);
# - a profile for every user id that has none, with the batch's first/last seen already;
# - the `user_id` identity of every named profile that lacks one.
# Most of a batch's users were seen before: their `user_id` identity is found with one probe of
# its unique index, and only the others are looked up among the profiles.
# Both lookups are scalar subqueries, which PostgreSQL runs as one index probe per user whatever
# its statistics say. Written as joins, a table that grew fast since its last ANALYZE (a new
# installation, a backfill) made the planner expect a handful of rows and rescan every identity
# (or every profile) for each user of the batch: a cost that grew with the table, 120 ms a batch
# at 1,500 profiles.
_INGESTED_SQL = pgsql.SQL("""
WITH backlog AS (
    INSERT INTO profiles_seenbacklog (first_event_id, last_event_id, created_at)
    SELECT r.f, r.l, %(now)s FROM unnest(%(firsts)s::bigint[], %(lasts)s::bigint[]) AS r(f, l)
),
users AS MATERIALIZED (
    SELECT e.user_id, min(e.timestamp) AS f, max(e.timestamp) AS l
    FROM tracking_event e
    WHERE {in_runs} AND e.user_id IS NOT NULL
    GROUP BY e.user_id
),
unnamed AS MATERIALIZED (
    SELECT u.user_id, u.f, u.l,
           (SELECT p.id FROM profiles_profile p WHERE p.user_id = u.user_id) AS profile_id
    FROM users u
    WHERE (SELECT 1 FROM profiles_identity i WHERE i.kind = 'user_id' AND i.value = u.user_id) IS NULL
),
created AS (
    INSERT INTO profiles_profile (user_id, name, gender, region, city, timezone, phone, email,
        push_opt_in, sms_opt_in, email_opt_in, traits, trait_updated_at, created_at, updated_at,
        first_seen_at, last_seen_at)
    SELECT u.user_id, '', '', '', '', '', '', '', false, false, false, '{{}}', '{{}}', %(now)s, %(now)s, u.f, u.l
    FROM unnamed u
    WHERE u.profile_id IS NULL
    ORDER BY u.user_id
    ON CONFLICT (user_id) DO NOTHING
    RETURNING id, user_id
)
INSERT INTO profiles_identity (profile_id, kind, value, created_at)
SELECT x.id, 'user_id', x.user_id, %(now)s
FROM (SELECT id, user_id FROM created
      UNION ALL SELECT profile_id, user_id FROM unnamed WHERE profile_id IS NOT NULL) x
ORDER BY x.user_id
ON CONFLICT (kind, value) DO NOTHING
""")


# Before tying anonymous ids to users: wait for any merge in flight that moves these users'
# identities. The insert's conflict check waits for the merging transaction (it changed the
# identity row), so the next statement sees where the user's profile went. Nothing is locked
# when nothing conflicts, and the foreign key checks are deferred to commit, so without this the
# anonymous id could land on the profile being merged away.
_AWAIT_MERGES_SQL = """
INSERT INTO profiles_identity (profile_id, kind, value, created_at)
SELECT p.id, 'user_id', p.user_id, %(now)s FROM profiles_profile p
WHERE p.user_id = ANY(%(named)s::text[]) ORDER BY p.user_id
ON CONFLICT (kind, value) DO NOTHING
"""
# The anonymous id of an event that also names its user belongs to that user's (surviving)
# profile; the first claim wins, later conflicts go through identify, which merges.
_ANON_IDENTITIES_SQL = """
INSERT INTO profiles_identity (profile_id, kind, value, created_at)
SELECT DISTINCT ON (x.a) COALESCE(p.merged_into_id, p.id), 'anonymous_id', x.a, %(now)s
FROM unnest(%(users)s::text[], %(anons)s::text[]) AS x(u, a)
JOIN profiles_identity i ON i.kind = 'user_id' AND i.value = x.u
JOIN profiles_profile p ON p.id = i.profile_id
ORDER BY x.a, x.u
ON CONFLICT (kind, value) DO NOTHING
"""
# A merge that committed after the statement above took its snapshot may have left an identity
# on the merged profile: this later statement sees the merge and moves it on.
_REPOINT_SQL = """
UPDATE profiles_identity i SET profile_id = p.merged_into_id
FROM profiles_profile p
WHERE i.profile_id = p.id AND p.merged_into_id IS NOT NULL
  AND i.kind = 'anonymous_id' AND i.value = ANY(%(anons)s::text[])
"""


_TIE_ANONYMOUS_IDS_SQL = ";\n".join(q.strip() for q in (_AWAIT_MERGES_SQL, _ANON_IDENTITIES_SQL, _REPOINT_SQL))


def record_ingested_events(*, events: Sequence[Any]) -> None:
    """Ingestion listener: profiles for new user ids (with their first/last seen), anonymous ids
    tied to the user an event names alongside, and the stored events queued for the first/last
    seen of existing profiles (`update_seen_times`). Runs inside the ingestion transaction,
    set-based, in one round trip: one statement, and three more when events name both a user and
    an anonymous id."""
    if not events:
        return
    now = timezone.now()
    pairs: dict[str, str] = {}
    for event in events:
        if event.user_id and event.anonymous_id and event.anonymous_id not in pairs:
            pairs[event.anonymous_id] = event.user_id
    # One run for a batch stored alone, a few when concurrent batches drew from the sequence.
    runs = runs_of(e.id for e in events)
    query = _INGESTED_SQL.format(in_runs=id_in_runs(runs))
    params: dict[str, Any] = {"now": now, "firsts": [a for a, _b in runs], "lasts": [b for _a, b in runs]}
    if pairs:
        anons = sorted(pairs)
        params.update(users=[pairs[a] for a in anons], anons=anons, named=sorted(set(pairs.values())))
        # One round trip for all four: the values are bound here, in the driver (Django's psycopg
        # cursors bind client-side), and in one query string each statement still takes its own
        # snapshot, so each sees what the one before it wrote or waited for.
        query = pgsql.Composed([query, pgsql.SQL(";\n" + _TIE_ANONYMOUS_IDS_SQL)])
    with connection.cursor() as cursor:
        cursor.execute(query, params)


def on_events_ingested(events: Sequence[Any]) -> None:
    record_ingested_events(events=events)


# --- first/last seen ------------------------------------------------------------------------

# One slice of the backlog: claimed with SKIP LOCKED (two workers take different slices), capped
# by its number of events, and deleted in the transaction that applies it.
_CLAIM_SQL = """
WITH claimed AS (
    SELECT id, first_event_id, last_event_id FROM profiles_seenbacklog
    ORDER BY id LIMIT %(max_runs)s FOR UPDATE SKIP LOCKED
),
picked AS (
    SELECT id FROM (
        SELECT id, sum(last_event_id - first_event_id + 1) OVER (ORDER BY id)
                   - (last_event_id - first_event_id + 1) AS before
        FROM claimed
    ) w
    WHERE before < %(max_events)s
)
DELETE FROM profiles_seenbacklog b USING picked WHERE b.id = picked.id
RETURNING b.first_event_id, b.last_event_id
"""
# The slice's events resolve to profiles as they do at read time: the `user_id` identity when an
# event names a user, else the `anonymous_id` one, and a merged profile's survivor. Rows are
# locked in id order, as identify does, so neither deadlocks the other; only rows whose values
# change are written, so applying a slice twice writes nothing.
_SEEN_SQL = pgsql.SQL("""
WITH spans AS (
    SELECT CASE WHEN e.user_id IS NOT NULL THEN 'user_id' ELSE 'anonymous_id' END AS kind,
           COALESCE(e.user_id, e.anonymous_id) AS value, min(e.timestamp) AS f, max(e.timestamp) AS l
    FROM tracking_event e
    WHERE {in_runs}
    GROUP BY 1, 2
),
seen AS (
    SELECT COALESCE(p.merged_into_id, p.id) AS profile_id, min(s.f) AS f, max(s.l) AS l
    FROM spans s
    JOIN profiles_identity i ON i.kind = s.kind AND i.value = s.value
    JOIN profiles_profile p ON p.id = i.profile_id
    GROUP BY 1
),
locked AS (
    SELECT p.id, s.f, s.l FROM profiles_profile p JOIN seen s ON s.profile_id = p.id
    WHERE p.first_seen_at IS NULL OR p.first_seen_at > s.f OR p.last_seen_at IS NULL OR p.last_seen_at < s.l
    ORDER BY p.id FOR NO KEY UPDATE OF p
),
updated AS (
    UPDATE profiles_profile p
    SET first_seen_at = LEAST(p.first_seen_at, l.f), last_seen_at = GREATEST(p.last_seen_at, l.l)
    FROM locked l
    WHERE p.id = l.id
    RETURNING p.merged_into_id, l.f, l.l
)
SELECT (SELECT count(*) FROM updated),
       (SELECT jsonb_agg(jsonb_build_object('id', merged_into_id, 'f', f, 'l', l))::text
        FROM updated WHERE merged_into_id IS NOT NULL)
""")
# A profile merged while the statement above waited for its row lock was updated after the merge
# had read its first/last seen: carry those values on to the survivor (and on again, should the
# survivor have been merged in the meantime too).
_SEEN_TO_SURVIVORS_SQL = """
WITH seen AS (
    SELECT x.id AS profile_id, min(x.f) AS f, max(x.l) AS l
    FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(id bigint, f timestamptz, l timestamptz)
    GROUP BY 1
),
locked AS (
    SELECT p.id, s.f, s.l FROM profiles_profile p JOIN seen s ON s.profile_id = p.id
    ORDER BY p.id FOR NO KEY UPDATE OF p
),
updated AS (
    UPDATE profiles_profile p
    SET first_seen_at = LEAST(p.first_seen_at, l.f), last_seen_at = GREATEST(p.last_seen_at, l.l)
    FROM locked l
    WHERE p.id = l.id
    RETURNING p.merged_into_id, l.f, l.l
)
SELECT (SELECT jsonb_agg(jsonb_build_object('id', merged_into_id, 'f', f, 'l', l))::text
        FROM updated WHERE merged_into_id IS NOT NULL)
"""
SEEN_MAX_RUNS = 1000
SEEN_MAX_EVENTS = 20_000


@dataclass(frozen=True)
class SeenUpdate:
    runs: int  # backlog rows applied
    events: int  # events they held
    profiles: int  # profiles whose first or last seen moved


@transaction.atomic
def update_seen_times(*, max_events: int = SEEN_MAX_EVENTS, max_runs: int = SEEN_MAX_RUNS) -> SeenUpdate:
    """Apply the first/last seen of one slice of the backlog (about `max_events` events, at least
    one run) to the profiles: first seen only moves back, last seen only forward, so late events
    and a slice applied twice leave the right values. One transaction: the slice leaves the
    backlog only together with the updates it carries."""
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, {"max_runs": max_runs, "max_events": max_events})
        claimed = cursor.fetchall()
        if not claimed:
            return SeenUpdate(runs=0, events=0, profiles=0)
        # Batches stored one after the other (or interleaved, by concurrent requests) leave runs
        # that join up: fewer, longer ranges for the index scan.
        cursor.execute(_SEEN_SQL.format(in_runs=id_in_runs(join_runs(claimed))))
        profiles, to_survivors = cursor.fetchone()
        while to_survivors:  # ends: merges only ever point at a profile that is not merged yet
            cursor.execute(_SEEN_TO_SURVIVORS_SQL, {"rows": to_survivors})
            (to_survivors,) = cursor.fetchone()
    events = sum(last - first + 1 for first, last in claimed)
    return SeenUpdate(runs=len(claimed), events=events, profiles=profiles)


def catch_up_seen_times(*, max_seconds: float = 50.0, max_events: int = SEEN_MAX_EVENTS) -> SeenUpdate:
    """Apply the backlog slice by slice until it is empty or `max_seconds` have passed (the next
    minutely run carries on), each slice in its own transaction."""
    deadline = time.monotonic() + max_seconds
    runs = events = profiles = 0
    while True:
        step = update_seen_times(max_events=max_events)
        runs, events, profiles = runs + step.runs, events + step.events, profiles + step.profiles
        if not step.runs or time.monotonic() >= deadline:
            return SeenUpdate(runs=runs, events=events, profiles=profiles)


# --- identify and merge ---------------------------------------------------------------------


@dataclass
class IdentifyResult:
    profile: Profile
    merged_profiles: int
    merged_user_ids: list[str] = field(default_factory=list)


def _is_deadlock(exc: OperationalError) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) in ("40P01", "40001")


def identify(
    *,
    user_id: str,
    anonymous_id: str | None = None,
    identities: Iterable[tuple[str, str]] = (),
    traits: dict[str, Any] | None = None,
    custom_traits: dict[str, Any] | None = None,
    source: str = "identify",
) -> IdentifyResult:
    """Tie identities to `user_id`'s profile (created if new), merging any profile that held one
    of them into it, then set the traits (known traits as parsed values, custom ones as JSON).

    Concurrent calls touching the same identities are serialised by transaction-level advisory
    locks taken in a stable order; a deadlock with the ingestion path is retried."""
    claimed = {(IdentityKind.USER_ID.value, user_id)}
    if anonymous_id:
        claimed.add((IdentityKind.ANONYMOUS_ID.value, anonymous_id))
    for kind, value in identities:
        claimed.add((kind, normalize_identity(kind, value)))
    for attempt in range(3):
        try:
            with transaction.atomic():
                return _identify(
                    user_id=user_id,
                    claimed=sorted(claimed),
                    traits=traits or {},
                    custom=custom_traits or {},
                    source=source,
                )
        except OperationalError as exc:
            if not _is_deadlock(exc) or attempt == 2:
                raise
            logger.warning("identify of %s retried after a deadlock", user_id)
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _identify(
    *, user_id: str, claimed: list[tuple[str, str]], traits: dict[str, Any], custom: dict[str, Any], source: str
) -> IdentifyResult:
    now = timezone.now()
    with connection.cursor() as cursor:
        for kind, value in claimed:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))", [f"{kind}:{value}"])
    Profile.objects.bulk_create([Profile(user_id=user_id)], ignore_conflicts=True)
    own = Profile.objects.only("id").get(user_id=user_id)
    Identity.objects.bulk_create(
        [Identity(profile_id=own.id, kind=IdentityKind.USER_ID, value=user_id)], ignore_conflicts=True
    )
    merged: list[Profile] = []
    for _round in range(5):
        holders = _holders(claimed)
        target_id = holders[(IdentityKind.USER_ID, user_id)]
        involved = sorted({target_id, *holders.values()})
        locked = {p.id: p for p in Profile.objects.select_for_update().filter(id__in=involved).order_by("id")}
        holders = _holders(claimed)  # re-read under the locks: a concurrent merge may have moved them
        target_id = holders[(IdentityKind.USER_ID, user_id)]
        if not set(holders.values()) <= set(locked):
            continue
        target = locked[target_id]
        if target.merged_into_id:  # cannot happen while identities move with merges; be safe
            target = Profile.objects.select_for_update().get(id=target.merged_into_id)
        for other_id in sorted(set(holders.values()) - {target.id}):
            other = locked[other_id]
            _merge(into=target, other=other, reason=_reason(claimed, holders, other_id, source), at=now)
            merged.append(other)
        missing = [(k, v) for k, v in claimed if (k, v) not in holders]
        Identity.objects.bulk_create(
            [Identity(profile_id=target.id, kind=k, value=v, created_at=now) for k, v in missing],
            ignore_conflicts=True,
        )
        if set(_holders(claimed).values()) == {target.id}:
            break
    else:
        raise OperationalError("identify did not settle; retry")
    _apply_traits(target, traits=traits, custom=custom, at=now)
    return IdentifyResult(profile=target, merged_profiles=len(merged), merged_user_ids=[p.user_id for p in merged])


def _holders(claimed: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    from django.db.models import Q

    query = Q()
    for kind, value in claimed:
        query |= Q(kind=kind, value=value)
    return {(i.kind, i.value): i.profile_id for i in Identity.objects.filter(query).only("kind", "value", "profile")}


def _reason(claimed: list[tuple[str, str]], holders: dict[tuple[str, str], int], other_id: int, source: str) -> str:
    shared = [f"{k}" for k, _v in claimed if holders.get((k, _v)) == other_id]
    return f"{source}: shared " + ", ".join(sorted(set(shared)))


def _trait_value(profile: Profile, name: str) -> Any:
    return getattr(profile, name) if name in KNOWN_TRAITS else profile.traits.get(name)


def _is_set(value: Any) -> bool:
    return value not in (None, "", False)


def _merge(*, into: Profile, other: Profile, reason: str, at: datetime) -> None:
    """Fold `other` into `into`: identities move, traits keep the more recent value, tags are
    united, and `other` keeps its row pointing at `into` so its old user id still leads here."""
    Identity.objects.filter(profile=other).update(profile=into)
    fallback_other = (other.last_seen_at or other.updated_at).isoformat()
    fallback_into = (into.last_seen_at or into.updated_at).isoformat()
    names = set(KNOWN_TRAITS) | set(into.traits) | set(other.traits)
    for name in sorted(names):
        mine, theirs = _trait_value(into, name), _trait_value(other, name)
        # An unset value only wins when it was set explicitly (an opt-out, a cleared trait).
        if mine == theirs or (not _is_set(theirs) and name not in other.trait_updated_at):
            continue
        mine_at = into.trait_updated_at.get(name, fallback_into if _is_set(mine) else "")
        theirs_at = other.trait_updated_at.get(name, fallback_other)
        if name == "signup_at":
            take = theirs is not None and (mine is None or theirs < mine)  # the earlier signup
        else:
            take = not _is_set(mine) or theirs_at > mine_at
        if take:
            if name in KNOWN_TRAITS:
                setattr(into, name, theirs)
            else:
                into.traits[name] = theirs
            into.trait_updated_at[name] = theirs_at
    firsts = [t for t in (into.first_seen_at, other.first_seen_at) if t]
    lasts = [t for t in (into.last_seen_at, other.last_seen_at) if t]
    into.first_seen_at = min(firsts) if firsts else None
    into.last_seen_at = max(lasts) if lasts else None
    into.save()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH moved AS (
                INSERT INTO profiles_profiletag (profile_id, tag_id, score, source, computed_at)
                SELECT %(into)s, tag_id, score, source, computed_at FROM profiles_profiletag
                WHERE profile_id = %(other)s
                ON CONFLICT (profile_id, tag_id) DO NOTHING
                RETURNING tag_id, source
            ),
            dropped AS (
                DELETE FROM profiles_profiletag WHERE profile_id = %(other)s RETURNING tag_id, source
            )
            INSERT INTO profiles_tagchange (profile_id, tag_id, action, source, at)
            SELECT %(into)s, tag_id, 'added', source, %(at)s FROM moved
            UNION ALL SELECT %(other)s, tag_id, 'removed', source, %(at)s FROM dropped
            """,
            {"into": into.id, "other": other.id, "at": at},
        )
    Profile.objects.filter(merged_into=other).update(merged_into=into)
    other.merged_into = into
    other.save(update_fields=["merged_into", "updated_at"])
    ProfileMerge.objects.create(into=into, merged=other, merged_user_id=other.user_id, reason=reason[:300], at=at)
    from profiles.lookup import notify_merged

    notify_merged(into, other)


def _apply_traits(profile: Profile, *, traits: dict[str, Any], custom: dict[str, Any], at: datetime) -> None:
    if not traits and not custom:
        return
    stamp = at.isoformat()
    for name, value in traits.items():
        setattr(profile, name, value)
        profile.trait_updated_at[name] = stamp
    for name, value in custom.items():
        if value is None:
            profile.traits.pop(name, None)
        else:
            profile.traits[name] = value
        profile.trait_updated_at[name] = stamp
    profile.save()


# --- tags -----------------------------------------------------------------------------------


@transaction.atomic
def tag_profiles(
    *,
    tag_name: str,
    profile_ids: Iterable[int],
    source: str = TagSource.MANUAL,
    category: str = "",
    score: float | None = None,
    actor: Any = None,
) -> int:
    """Give `tag_name` to these profiles (creating the tag if new); returns how many gained it.
    Each gain is recorded as a tag change, the action as one audit entry (`actor` None: the
    system, e.g. a campaign's feedback)."""
    tag, _ = Tag.objects.get_or_create(name=tag_name, defaults={"category": category, "source": source})
    ids = sorted({int(pid) for pid in profile_ids})
    if not ids:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH added AS (
                INSERT INTO profiles_profiletag (profile_id, tag_id, score, source, computed_at)
                SELECT p.id, %(tag)s, %(score)s, %(source)s, %(at)s
                FROM profiles_profile p WHERE p.id = ANY(%(ids)s::bigint[])
                ON CONFLICT (profile_id, tag_id) DO NOTHING
                RETURNING profile_id
            ),
            logged AS (
                INSERT INTO profiles_tagchange (profile_id, tag_id, action, source, at)
                SELECT profile_id, %(tag)s, 'added', %(source)s, %(at)s FROM added RETURNING 1
            )
            SELECT count(*) FROM logged
            """,
            {"tag": tag.id, "score": score, "source": source, "at": timezone.now(), "ids": ids},
        )
        gained = cursor.fetchone()[0]
    record_audit(
        action="profiles.tag_added",
        obj=tag,
        actor=actor,
        details={"profiles": len(ids), "gained": gained, "source": source},
    )
    return gained


@transaction.atomic
def untag_profiles(*, tag_name: str, profile_ids: Iterable[int], actor: Any = None) -> int:
    """Take `tag_name` away from these profiles; returns how many lost it. Each loss is recorded
    as a tag change, the action as one audit entry."""
    tag = Tag.objects.filter(name=tag_name).first()
    ids = sorted({int(pid) for pid in profile_ids})
    if tag is None or not ids:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH removed AS (
                DELETE FROM profiles_profiletag WHERE tag_id = %(tag)s AND profile_id = ANY(%(ids)s::bigint[])
                RETURNING profile_id, source
            ),
            logged AS (
                INSERT INTO profiles_tagchange (profile_id, tag_id, action, source, at)
                SELECT profile_id, %(tag)s, 'removed', source, %(at)s FROM removed RETURNING 1
            )
            SELECT count(*) FROM logged
            """,
            {"tag": tag.id, "ids": ids, "at": timezone.now()},
        )
        lost = cursor.fetchone()[0]
    record_audit(action="profiles.tag_removed", obj=tag, actor=actor, details={"profiles": len(ids), "lost": lost})
    return lost


def record_imported_tag(*, profile_tag: ProfileTag, created: bool) -> None:
    """Log the gain of a tag that a CSV import added row by row."""
    if created:
        TagChange.objects.create(
            profile_id=profile_tag.profile_id,
            tag_id=profile_tag.tag_id,
            action=TagChangeAction.ADDED,
            source=profile_tag.source,
        )


def record_tags_imported(*, new: int, updated: int, actor: Any = None) -> None:
    """Audit a finished CSV import of tag members (its rows were logged one by one above)."""
    record_audit(action="profiles.tags_imported", actor=actor, details={"new": new, "updated": updated})


@transaction.atomic
def save_tag(*, tag: Tag, changed: Sequence[str] = (), actor: Any = None) -> Tag:
    """Create or change a tag's description (its members change through tagging and rules)."""
    tag.save()
    record_audit(action="profiles.tag_saved", obj=tag, actor=actor, details={"changed": list(changed)})
    return tag


@transaction.atomic
def delete_tag(*, tag: Tag, actor: Any = None) -> None:
    """Delete a tag and, with it, its members and their history."""
    record_audit(action="profiles.tag_deleted", obj=tag, actor=actor, details={"name": tag.name})
    tag.delete()


@transaction.atomic
def save_tag_rule(*, rule: TagRule, changed: Sequence[str] = (), actor: Any = None) -> TagRule:
    """Create or change a tag rule; its members change at its next recompute."""
    rule.save()
    record_audit(action="profiles.tag_rule_saved", obj=rule, actor=actor, details={"changed": list(changed)})
    return rule


@transaction.atomic
def delete_tag_rule(*, rule: TagRule, actor: Any = None) -> None:
    record_audit(action="profiles.tag_rule_deleted", obj=rule, actor=actor, details={"name": rule.name})
    rule.delete()


@transaction.atomic
def request_tag_rule_recompute(*, rule_ids: Sequence[int], actor: Any = None) -> list[int]:
    """Queue these rules' recompute now (each as its own task), audited; returns the ids queued."""
    from profiles.tasks import recompute_tag_rule as task  # tasks import services

    rules_found = list(TagRule.objects.filter(id__in=rule_ids).order_by("id"))
    for rule in rules_found:
        record_audit(action="profiles.tag_rule_recompute_requested", obj=rule, actor=actor)
    ids = [rule.id for rule in rules_found]
    transaction.on_commit(lambda: [publish(f"tag rule {rule_id}", task, args=[rule_id]) for rule_id in ids])
    return ids


@dataclass(frozen=True)
class RecomputeResult:
    rule_id: int
    added: int
    removed: int
    members: int
    seconds: float


def recompute_tag_rule(*, rule_id: int) -> RecomputeResult:
    """Recompute the members of the tags of one rule, in one transaction. Concurrent runs of the
    same rule queue behind the rule's row lock instead of interleaving. An error marks the rule's
    last run failed with the reason (traceback in the log) and is raised again."""
    try:
        return _recompute_tag_rule(rule_id=rule_id)
    except Exception as exc:
        TagRule.objects.filter(id=rule_id).update(
            last_status=TagRunStatus.FAILED,
            last_error=log_failure(logger, f"tag rule {rule_id} recompute", exc),
            last_run_at=timezone.now(),
        )
        raise


@transaction.atomic
def retry_tag_rule(*, rule_id: int, actor: Any = None, api_key: Any = None) -> TagRule:
    """Queue the recompute of a rule whose last run failed again, audited."""
    from profiles.tasks import recompute_tag_rule as task  # tasks import services

    rule = TagRule.objects.select_for_update().filter(id=rule_id).first()
    if rule is None:
        raise TagRuleNotFound(f"No tag rule {rule_id}.")
    if rule.last_status != TagRunStatus.FAILED:
        raise TagRuleNotFailed(f"Tag rule {rule.name!r} has not failed: only a failed rule is retried.")
    TagRule.objects.filter(id=rule.id).update(last_status=TagRunStatus.QUEUED)
    rule.last_status = TagRunStatus.QUEUED
    record_audit(
        action="profiles.tag_rule_retried",
        obj=rule,
        actor=actor,
        api_key=api_key,
        details={"previous_error": rule.last_error},
    )
    transaction.on_commit(lambda: publish(f"tag rule {rule.id}", task, args=[rule.id]))
    return rule


@transaction.atomic
def _recompute_tag_rule(*, rule_id: int) -> RecomputeResult:
    started = time.monotonic()
    rule = TagRule.objects.select_for_update().get(id=rule_id)
    try:
        rule.full_clean(exclude=["name"])
    except ValidationError as exc:
        raise RuleNotRunnable(f"Rule '{rule.name}' is not runnable: {exc.messages}") from exc
    at = timezone.now()
    recompute = _recompute_rule_tag if rule.kind == TagRuleKind.RULE else _recompute_preference
    result = recompute(rule, at)
    seconds = time.monotonic() - started
    TagRule.objects.filter(id=rule.id).update(
        last_run_at=at,
        last_run_members=result.members,
        last_run_seconds=seconds,
        last_error="",
        last_status=TagRunStatus.DONE,
    )
    return RecomputeResult(
        rule_id=rule.id, added=result.added, removed=result.removed, members=result.members, seconds=seconds
    )


def _recompute_rule_tag(rule: TagRule, at: datetime) -> rules.SyncResult:
    tag, _ = Tag.objects.get_or_create(
        name=rule.tag_name, defaults={"category": rule.tag_category, "source": TagSource.RULE, "rule": rule}
    )
    if tag.rule_id != rule.id or tag.source != TagSource.RULE:
        Tag.objects.filter(id=tag.id).update(rule=rule, source=TagSource.RULE)
    select, params = rules.compile_rule(rule.conditions, at=at)
    target = f"SELECT t.profile_id, {int(tag.id)}::bigint, NULL::float8 FROM ({select}) t"
    owned = list(Tag.objects.filter(rule=rule).values_list("id", flat=True))
    result = rules.sync_members(target_sql=target, params=params, tag_ids=owned, source=TagSource.RULE, at=at)
    Tag.objects.filter(id__in=owned).update(computed_at=at)
    return result


def preference_tag_name(prefix: str, category: str) -> str:
    slug = slugify(f"{prefix}{category}", allow_unicode=True)[:100]
    return slug or f"{prefix}category"


def _recompute_preference(rule: TagRule, at: datetime) -> rules.SyncResult:
    from datetime import timedelta

    ids, categories, counts = rules.category_counts(
        event_name=rule.event_name,
        category_property=rule.category_property,
        since=at - timedelta(days=rule.window_days),
    )
    found = rules.preferences(
        ids, categories, counts, min_count=rule.min_count, p_value_threshold=rule.p_value_threshold
    )
    names = {c: preference_tag_name(rule.tag_prefix, c) for c in {p.category for p in found}}
    existing = {t.name: t for t in Tag.objects.filter(name__in=names.values())}
    new_tags = [
        Tag(
            name=name,
            category=rule.tag_category or "preference",
            source=TagSource.STATISTICAL,
            rule=rule,
            description=f"Prefers {category} ({rule.event_name}.{rule.category_property})",
        )
        for category, name in names.items()
        if name not in existing
    ]
    Tag.objects.bulk_create(new_tags, ignore_conflicts=True)
    tag_ids = dict(Tag.objects.filter(name__in=names.values()).values_list("name", "id"))
    Tag.objects.filter(id__in=tag_ids.values()).exclude(rule=rule).update(rule=rule, source=TagSource.STATISTICAL)
    best: dict[tuple[int, int], float] = {}
    for pref in found:
        key = (pref.profile_id, tag_ids[names[pref.category]])
        best[key] = max(best.get(key, 0.0), round(pref.effect_size, 6))
    owned = list(Tag.objects.filter(rule=rule).values_list("id", flat=True))
    target = "SELECT * FROM unnest(%(pids)s::bigint[], %(tids)s::bigint[], %(scores)s::float8[])"
    params = {
        "pids": [k[0] for k in best],
        "tids": [k[1] for k in best],
        "scores": list(best.values()),
    }
    result = rules.sync_members(target_sql=target, params=params, tag_ids=owned, source=TagSource.STATISTICAL, at=at)
    Tag.objects.filter(id__in=owned).update(computed_at=at)
    return result


# --- customer-service lookup ----------------------------------------------------------------


@dataclass
class LookupOutcome:
    profiles: list[Profile]
    record: LookupRecord
    may_see_personal_data: bool


def record_profile_access(
    *, staff: Any, query: str, profiles: Sequence[tuple[int, str]], channel: str = LookupChannel.ADMIN
) -> LookupRecord:
    """Record that a staff member saw these profiles (id, user id) other than through the lookup:
    a search of the Profiles or Identities list, a profile's own page, the profile API with a
    session. Every path by which staff reach a person leaves a record."""
    return LookupRecord.objects.create(
        staff=staff if getattr(staff, "is_authenticated", False) else None,
        staff_username=getattr(staff, "username", "") or "",
        query=str(query)[:200],
        channel=channel,
        saw_personal_data=bool(staff.has_perm("profiles.see_personal_data")),
        profile_ids=[pk for pk, _u in profiles],
        user_ids=[u for _pk, u in profiles],
    )


def lookup_profiles(*, staff: Any, query: str, channel: str = LookupChannel.API) -> LookupOutcome:
    """Find the profiles a caller may be, and record who looked for what and what they saw.

    A refused query is recorded too (then re-raised as a validation error), so probing shows up
    in the record."""
    may_see = bool(staff.has_perm("profiles.see_personal_data"))
    base = {
        "staff": staff if getattr(staff, "is_authenticated", False) else None,
        "staff_username": getattr(staff, "username", "") or "",
        "query": str(query)[:200],
        "channel": channel,
        "saw_personal_data": may_see,
    }
    try:
        cleaned = validate_lookup_query(query)
    except ValidationError as exc:
        LookupRecord.objects.create(**base, refused="; ".join(exc.messages)[:200])
        raise
    profiles = find_profiles(cleaned)
    record = LookupRecord.objects.create(
        **base, profile_ids=[p.id for p in profiles], user_ids=[p.user_id for p in profiles]
    )
    return LookupOutcome(profiles=profiles, record=record, may_see_personal_data=may_see)
