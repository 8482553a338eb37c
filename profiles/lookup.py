"""The registry through which higher apps add sections to the customer-service 360 view.

`profiles` sits below `crm`, `coupons` and `campaigns` and must not import them; each of those
registers a function here from its AppConfig.ready(), and the lookup calls them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from profiles.models import Profile

SectionBuilder = Callable[[Profile], Any]
_sections: dict[str, SectionBuilder] = {}


def register_section(name: str, builder: SectionBuilder) -> None:
    """Add (or replace) the section `name`; `builder(profile)` returns JSON-ready data."""
    _sections[name] = builder


def sections_for(profile: Profile) -> dict[str, Any]:
    return {name: builder(profile) for name, builder in sorted(_sections.items())}


def registered_sections() -> list[str]:
    return sorted(_sections)


# --- fields of the product-facing profile ---------------------------------------------------
# `GET /api/v1/profiles/{user_id}` shows `tier`, `rfm` and `lifecycle`, which `crm` computes, and
# `predictions`, which `predictions` computes. Each registers a builder here; until then: null.
FieldBuilder = Callable[[Profile], Any]
PROFILE_FIELDS = ("tier", "rfm", "lifecycle", "predictions")
_fields: dict[str, FieldBuilder] = {}


def register_profile_field(name: str, builder: FieldBuilder) -> None:
    """Provide (or replace) the profile field `name`; `builder(profile)` returns JSON-ready data."""
    _fields[name] = builder


def profile_fields_for(profile: Profile) -> dict[str, Any]:
    """Every registered field of `profile`, with null for the contract's fields nobody provides."""
    values: dict[str, Any] = dict.fromkeys(PROFILE_FIELDS)
    for name, builder in sorted(_fields.items()):
        values[name] = builder(profile)
    return values


def registered_profile_fields() -> list[str]:
    return sorted(_fields)


# --- merges ---------------------------------------------------------------------------------
# Apps above keep rows per profile (value scores, coupons, deliveries). When identify merges
# `merged` into `into`, each registered listener is called inside the merge's transaction to move
# or combine what it keeps; events need nothing, they follow through the identities.
MergeListener = Callable[[Profile, Profile], None]
_merge_listeners: dict[str, MergeListener] = {}


def register_merge_listener(name: str, listener: MergeListener) -> None:
    """Attach (or replace) `listener(into, merged)`, from the app's AppConfig.ready()."""
    _merge_listeners[name] = listener


def notify_merged(into: Profile, merged: Profile) -> None:
    for _name, listener in sorted(_merge_listeners.items()):
        listener(into, merged)


# --- the one line an agent reads out ----------------------------------------------------------
# "Core customer, last order 3 days ago, 1 unused coupon expiring Friday": each app above adds the
# part it knows (crm the tier and last order, coupons the unused coupons), in `order`.
SummaryPart = Callable[[Profile], str | None]
_summary_parts: dict[str, tuple[int, SummaryPart]] = {}


def register_summary_part(name: str, builder: SummaryPart, *, order: int) -> None:
    """Add (or replace) the part `name` of the lookup's summary line; `builder(profile)` returns a
    phrase, or None when it has nothing to say about this person."""
    _summary_parts[name] = (order, builder)


def summary_for(profile: Profile) -> str:
    parts = [builder(profile) for _order, builder in sorted(_summary_parts.values(), key=lambda p: p[0])]
    line = ", ".join(part for part in parts if part)
    return line[:1].upper() + line[1:]
