"""Writes of the profiles app: one function per business action."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from profiles.models import Identity, IdentityKind, Profile, ProfileTag, Tag, TagSource
from profiles.selectors import profile_for_user_id


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


@transaction.atomic
def tag_profiles(
    *,
    tag_name: str,
    profile_ids: Iterable[int],
    source: str = TagSource.MANUAL,
    category: str = "",
    score: float | None = None,
) -> int:
    """Give `tag_name` to these profiles (creating the tag if new); returns how many gained it."""
    tag, _ = Tag.objects.get_or_create(name=tag_name, defaults={"category": category, "source": source})
    now = timezone.now()
    rows = [
        ProfileTag(profile_id=pid, tag=tag, score=score, source=source, computed_at=now) for pid in set(profile_ids)
    ]
    before = ProfileTag.objects.filter(tag=tag).count()
    ProfileTag.objects.bulk_create(rows, ignore_conflicts=True, batch_size=5000)
    return ProfileTag.objects.filter(tag=tag).count() - before


@transaction.atomic
def untag_profiles(*, tag_name: str, profile_ids: Iterable[int]) -> int:
    """Take `tag_name` away from these profiles; returns how many lost it."""
    deleted, _ = ProfileTag.objects.filter(tag__name=tag_name, profile_id__in=list(profile_ids)).delete()
    return deleted
