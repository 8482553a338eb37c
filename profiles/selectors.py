"""Reads of the profiles app."""

from __future__ import annotations

from profiles.models import IdentityKind, Profile


def profile_for_user_id(user_id: str) -> Profile | None:
    """The profile a product `user_id` belongs to now (after any merge), or None."""
    return (
        Profile.objects.filter(identities__kind=IdentityKind.USER_ID, identities__value=user_id)
        .select_related(None)
        .first()
    )
