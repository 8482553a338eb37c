"""Tables other apps add to the tier pages (the distribution page): `predictions`, above crm,
adds its predicted-value tiers here from its AppConfig.ready(), as crm cannot import it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# `builder()` returns {"title", "columns": [...], "rows": [{"label", "url", "cells": [...]}]}.
TierPanel = Callable[[], dict[str, Any]]
_panels: dict[str, TierPanel] = {}


def register_tier_panel(name: str, builder: TierPanel) -> None:
    """Add (or replace) the panel `name` of the distribution page."""
    _panels[name] = builder


def tier_panels() -> list[dict[str, Any]]:
    return [builder() for _name, builder in sorted(_panels.items())]
