"""Reads of the profiles app."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Q
from django.utils.translation import gettext

from profiles.models import Identity, IdentityKind, Profile, ProfileEvent, ProfileTag, Tag
from profiles.normalize import (
    KNOWN_TRAITS,
    mask_email,
    mask_identifier,
    mask_phone,
    mask_properties,
    normalize_email,
    normalize_phone,
)

LOOKUP_MIN_LENGTH = 2
LOOKUP_MAX_LENGTH = 100
LOOKUP_MAX_RESULTS = 20
# Characters no user id, phone, e-mail or device id of ours contains, but SQL probes and
# wildcard attempts do; refusing them says plainly that the lookup is exact-match only.
LOOKUP_REFUSED_CHARS = re.compile(r"""['";\\%*<>`\x00-\x1f\x7f]""")


def profile_for_user_id(user_id: str) -> Profile | None:
    """The profile a product `user_id` belongs to now (after any merge), or None."""
    return (
        Profile.objects.filter(identities__kind=IdentityKind.USER_ID, identities__value=user_id)
        .select_related(None)
        .first()
    )


def known_traits(profile: Profile) -> dict[str, Any]:
    """Known traits as JSON-ready values, then the custom ones."""
    values: dict[str, Any] = {}
    for name in KNOWN_TRAITS:
        value = getattr(profile, name)
        values[name] = value.isoformat() if hasattr(value, "isoformat") else value
    return {**values, **{k: v for k, v in profile.traits.items() if k not in values}}


def tags_of(profile: Profile) -> list[dict[str, Any]]:
    return [
        {"name": pt.tag.name, "category": pt.tag.category, "score": pt.score}
        for pt in ProfileTag.objects.filter(profile=profile)
        .select_related("tag")
        .order_by("tag__category", "tag__name")
    ]


def profile_detail(user_id: str, *, may_see_personal_data: bool = True) -> dict[str, Any] | None:
    """The product's view of one person (`GET /api/v1/profiles/{user_id}`), or None. Phone and
    e-mail are masked for readers without the personal-data right."""
    from profiles.lookup import profile_fields_for

    if not user_id or len(user_id) > 128 or "\x00" in user_id:
        return None  # no stored user id looks like that
    profile = profile_for_user_id(user_id)
    if profile is None:
        return None
    traits = known_traits(profile)
    if not may_see_personal_data:
        traits["phone"], traits["email"] = mask_phone(profile.phone), mask_email(profile.email)
    return {
        "user_id": profile.user_id,
        "traits": traits,
        "tags": tags_of(profile),
        **profile_fields_for(profile),
        "first_seen_at": profile.first_seen_at,
        "last_seen_at": profile.last_seen_at,
    }


def validate_lookup_query(query: Any) -> str:
    """The query stripped, or a ValidationError on `q` saying what is wrong with it."""
    if not isinstance(query, str):
        raise ValidationError({"q": gettext("Give a query in `q`.")})
    text = query.strip()
    if not text:
        raise ValidationError({"q": gettext("The query is empty.")})
    if len(text) < LOOKUP_MIN_LENGTH:
        raise ValidationError({"q": gettext("The query needs at least %(n)s characters.") % {"n": LOOKUP_MIN_LENGTH}})
    if len(text) > LOOKUP_MAX_LENGTH:
        raise ValidationError({"q": gettext("The query may have at most %(n)s characters.") % {"n": LOOKUP_MAX_LENGTH}})
    if LOOKUP_REFUSED_CHARS.search(text):
        raise ValidationError(
            {
                "q": gettext(
                    "The query holds characters no identifier has (quotes, ;, %, *, <, >, \\ or control characters)."
                )
            }
        )
    return text


def find_profiles(query: str) -> list[Profile]:
    """Profiles whose user id, phone, e-mail or any identity equals `query` (phones in any common
    format, e-mails in any case). Exact matches on indexed columns only: a short query can never
    turn into a scan, and nothing about non-matching profiles comes back."""
    values = {query}
    phone = email = None
    try:
        phone = normalize_phone(query)
        values.add(phone)
    except ValueError:
        pass
    if "@" in query:
        try:
            email = normalize_email(query)
            values.add(email)
        except ValueError:
            pass
    match = Q(id__in=Identity.objects.filter(value__in=sorted(values)).values("profile_id")) | Q(user_id=query)
    if phone:
        match |= Q(phone=phone) & ~Q(phone="")
    if email:
        match |= Q(email=email) & ~Q(email="")
    found = list(Profile.objects.filter(match).only("id", "merged_into_id").order_by("id")[: LOOKUP_MAX_RESULTS * 2])
    # A merged profile stands for the one it was merged into.
    ids = []
    for profile in found:
        pid = profile.merged_into_id or profile.id
        if pid not in ids:
            ids.append(pid)
    ids = ids[:LOOKUP_MAX_RESULTS]
    by_id = {p.id: p for p in Profile.objects.filter(id__in=ids)}
    return [by_id[i] for i in ids if i in by_id]


def latest_events(profile: Profile, limit: int = 20, *, may_see_personal_data: bool = True) -> list[dict[str, Any]]:
    """The person's latest events, through every user and anonymous id they have (merges
    included), each fetched with the (id, timestamp) indexes of the event table."""
    idents = list(
        Identity.objects.filter(
            profile=profile, kind__in=[IdentityKind.USER_ID, IdentityKind.ANONYMOUS_ID]
        ).values_list("kind", "value")
    )
    if not idents:
        return []
    events = (
        ProfileEvent.objects.filter(profile_id=profile.id)
        .filter(
            Q(user_id__in=[v for k, v in idents if k == IdentityKind.USER_ID])
            | Q(anonymous_id__in=[v for k, v in idents if k == IdentityKind.ANONYMOUS_ID])
        )
        .order_by("-timestamp")
        .values("name", "kind", "timestamp", "properties")[:limit]
    )
    shown = (lambda p: p) if may_see_personal_data else mask_properties
    return [{**e, "properties": shown(e["properties"]), "timestamp": e["timestamp"].isoformat()} for e in events]


# Identifiers that reach a person on another service: masked for readers without the right.
MASKED_IDENTITY_KINDS = (IdentityKind.OPENID, IdentityKind.UNIONID, IdentityKind.DEVICE, IdentityKind.COOKIE)


def lookup_view(profile: Profile, *, may_see_personal_data: bool, full: bool = True) -> dict[str, Any]:
    """One result of a customer-service lookup: the contract's fields, then the 360 view."""
    from profiles.lookup import profile_fields_for, sections_for

    fields = profile_fields_for(profile)
    phone = profile.phone if may_see_personal_data else mask_phone(profile.phone)
    email = profile.email if may_see_personal_data else mask_email(profile.email)
    view: dict[str, Any] = {
        "user_id": profile.user_id,
        "name": profile.name,
        "phone": phone,
        "email": email,
        "tier": fields.get("tier"),
        "lifecycle": fields.get("lifecycle"),
        "tags": tags_of(profile),
    }
    if full:
        traits = known_traits(profile)
        traits["phone"], traits["email"] = phone, email
        identities = []
        for kind, value in (
            Identity.objects.filter(profile=profile).order_by("kind", "value").values_list("kind", "value")
        ):
            if not may_see_personal_data and kind == IdentityKind.PHONE:
                value = mask_phone(value)
            elif not may_see_personal_data and kind == IdentityKind.EMAIL:
                value = mask_email(value)
            elif not may_see_personal_data and kind in MASKED_IDENTITY_KINDS:
                value = mask_identifier(value)
            identities.append({"kind": kind, "value": value})
        view.update(
            traits=traits,
            identities=identities,
            rfm=fields.get("rfm"),
            first_seen_at=profile.first_seen_at.isoformat() if profile.first_seen_at else None,
            last_seen_at=profile.last_seen_at.isoformat() if profile.last_seen_at else None,
            sections=sections_for(profile),
            latest_events=latest_events(profile, may_see_personal_data=may_see_personal_data),
        )
    return view


def tag_member_history(tag: Tag, *, days: int = 90, today: date | None = None) -> list[tuple[date, int]]:
    """Members at the end of each of the last `days` days, anchored on today's true count and
    walked back through the recorded changes, so it is right even for members added before
    history was kept."""
    today = today or date.today()
    start = today - timedelta(days=days - 1)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH days AS (SELECT d::date AS day FROM generate_series(%(start)s::date, %(today)s::date, '1 day') d),
            net AS (
                SELECT (at AT TIME ZONE 'UTC')::date AS day,
                       sum(CASE WHEN action = 'added' THEN 1 ELSE -1 END) AS delta
                FROM profiles_tagchange WHERE tag_id = %(tag)s AND at >= %(start)s::date + interval '1 day'
                GROUP BY 1
            )
            SELECT days.day,
                   (SELECT count(*) FROM profiles_profiletag WHERE tag_id = %(tag)s)
                   - COALESCE((SELECT sum(delta) FROM net WHERE net.day > days.day), 0)
            FROM days ORDER BY days.day
            """,
            {"tag": tag.id, "start": start, "today": today},
        )
        return [(day, int(count)) for day, count in cursor.fetchall()]


def profiles_that_gained(tag_name: str, *, since) -> list[int]:
    """Profiles that gained `tag_name` since `since` and still carry it ("became a fan this week")."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT DISTINCT c.profile_id FROM profiles_tagchange c
            JOIN profiles_tag t ON t.id = c.tag_id
            JOIN profiles_profiletag pt ON pt.tag_id = c.tag_id AND pt.profile_id = c.profile_id
            WHERE t.name = %s AND c.action = 'added' AND c.at >= %s
            ORDER BY 1
            """,
            [tag_name, since],
        )
        return [row[0] for row in cursor.fetchall()]


# --- whose events: the rule of `profiles_profileevent` for reads that get events elsewhere -----
# An event is the profile's whose `user_id` identity it carries, else the profile's whose
# `anonymous_id` identity it carries (a reader that gets events from the events store, not
# through the view, resolves them with these).
EventKey = tuple[str, str]  # (identity kind, value): ("user_id", ...) or ("anonymous_id", ...)

_EVENT_KEYS_OF = """
SELECT kind, value, profile_id FROM profiles_identity
WHERE profile_id = ANY(%(profiles)s) AND kind IN ('user_id', 'anonymous_id')
"""
_USER_ID_OWNERS = "SELECT value, profile_id FROM profiles_identity WHERE kind = 'user_id' AND value = ANY(%(users)s)"


def event_keys_of(profile_ids: Sequence[int]) -> dict[EventKey, int]:
    """The user ids and anonymous ids these profiles' events carry, each with its profile."""
    with connection.cursor() as cursor:
        cursor.execute(_EVENT_KEYS_OF, {"profiles": list(profile_ids)})
        return {(kind, value): profile for kind, value, profile in cursor.fetchall()}


def user_id_owners(user_ids: Iterable[str]) -> dict[EventKey, int]:
    """The profiles of these user ids (those with an identity), keyed as `event_keys_of` is."""
    users = sorted(set(user_ids))
    if not users:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(_USER_ID_OWNERS, {"users": users})
        return {(IdentityKind.USER_ID, value): profile for value, profile in cursor.fetchall()}


def event_owner(owners: dict[EventKey, int], *, user_id: str | None, anonymous_id: str | None) -> int | None:
    """The profile an event carrying these keys belongs to, among `owners`. A user id `owners`
    does not know must have been looked up (`user_id_owners`): one with an identity elsewhere
    makes the event that profile's, not its anonymous id's."""
    return owners.get((IdentityKind.USER_ID, user_id)) or owners.get((IdentityKind.ANONYMOUS_ID, anonymous_id))
