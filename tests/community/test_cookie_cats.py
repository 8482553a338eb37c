"""Competitor-app retention on real data: the Cookie Cats players (DataCamp / Kaggle, Tactile
Entertainment; see shared/data/SOURCES.md). Each player is a person whose one installed "app" is
their game version (gate_30 or gate_40), active before the window, and active again in it when
`retention_7` is true. The comparison of gate_30 with everyone else is then the published 7-day
retention test: 0.190201 vs 0.182000, two-proportion z-test p = 0.00155."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from django.db import connection

from community.selectors import competitor_apps
from profiles.models import Identity, Profile
from tracking.models import Event

pytestmark = pytest.mark.django_db(transaction=True)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "cookie_cats" / "cookie_cats.csv"
if not DATA.exists():  # the checkout may sit elsewhere; the shared folder is at a fixed place
    DATA = Path("/work/shared/data/cookie_cats/cookie_cats.csv")
AS_OF = datetime(2026, 3, 1, tzinfo=UTC)
START = AS_OF - timedelta(days=30)


def test_retention_with_and_without_an_app_matches_the_published_cookie_cats_test():
    players = pd.read_csv(DATA)
    players["user_id"] = "cc-" + players.userid.astype(str)
    profiles = Profile.objects.bulk_create(
        [
            Profile(user_id=u, traits={"installed_apps": [v]})
            for u, v in zip(players.user_id, players.version, strict=True)
        ],
        batch_size=5000,
    )
    Identity.objects.bulk_create(
        [Identity(profile=p, kind="user_id", value=p.user_id) for p in profiles], batch_size=5000
    )
    before, after = START - timedelta(days=3), START + timedelta(days=7)
    rows = [Event(event_id=uuid.uuid4(), name="app_open", timestamp=before, user_id=u) for u in players.user_id]
    rows += [
        Event(event_id=uuid.uuid4(), name="app_open", timestamp=after, user_id=u)
        for u in players.user_id[players.retention_7.astype(bool)]
    ]
    Event.objects.bulk_create(rows, batch_size=5000)
    # Statistics, as autovacuum gathers them after a bulk load in a live database: without them
    # the planner may take the 90,000 committed profiles for an empty table and nest the page's
    # query over them (minutes instead of a second).
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE profiles_profile; ANALYZE profiles_identity; ANALYZE tracking_event")

    result = competitor_apps(as_of=AS_OF, days=30)

    assert result["people"] == 90_189
    assert [(a["app"], a["users"]) for a in result["apps"]] == [("gate_40", 45_489), ("gate_30", 44_700)]
    gate_30 = result["apps"][1]
    assert gate_30["overlap_share"] == pytest.approx(44_700 / 90_189)
    assert gate_30["retention_with"] == pytest.approx(0.190201, abs=5e-7)
    assert gate_30["retention_without"] == pytest.approx(0.182000, abs=5e-7)
    assert gate_30["p_value"] == pytest.approx(0.00155, abs=5e-6) and gate_30["significant"]
    assert 0 < gate_30["ci_low"] < gate_30["difference"] < gate_30["ci_high"]
