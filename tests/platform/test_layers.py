"""The apps depend downwards only: each imports only the apps below it in `LAYERS` (README,
"Layout"). A new import upwards, or a cycle, fails here before it is merged."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# From the bottom up: the platform (settings, Celery, API glue; staff, keys and audit), then the
# domain layers, then what reads them all (health) and seeds them all (the demo).
LAYERS = [
    "config",
    "access",
    "tracking",
    "indicators",
    "profiles",
    "crm",
    "predictions",
    "coupons",
    "materials",
    "campaigns",
    "journeys",
    "community",
    "planning",
    "monitoring",
    "demo",
]


def _imported_apps(app: str) -> dict[str, str]:
    """Other apps that `app`'s modules import, each with one module that does."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / app).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in LAYERS and top != app:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_app_is_in_a_layer():
    from django.conf import settings

    ours = [name for name in settings.INSTALLED_APPS if (ROOT / name / "apps.py").exists()]
    assert sorted(ours) == sorted(LAYERS[1:])  # `config` is the project, not an app
    assert ours == LAYERS[1:], "INSTALLED_APPS lists our apps from the bottom layer up"


@pytest.mark.parametrize("app", LAYERS)
def test_an_app_imports_only_the_layers_below_it(app):
    below = set(LAYERS[: LAYERS.index(app)])
    upwards = {other: module for other, module in _imported_apps(app).items() if other not in below}
    assert upwards == {}, f"{app} imports layers above it: {upwards}"
