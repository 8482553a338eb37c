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
