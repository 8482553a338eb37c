"""The demo seeding: operators, teams, accounts, groups and community events for given users,
stored through ingestion, so the pages have numbers; a second run stores nothing twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Group

from community.models import Contact, Membership, OperatorAccount
from community.selectors import community_funnel, competitor_apps, group_health
from community.services import compute_contribution_scores, seed_demo_community
from tests.factories.crm import CustomerFactory, paid_order

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def test_seeding_builds_communities_that_every_page_can_read():
    customers = [CustomerFactory(user_id=f"demo-{i}") for i in range(60)]
    for p in customers:
        paid_order(p, "30.00", NOW - timedelta(days=100))
        paid_order(p, "45.00", NOW - timedelta(days=2))
    seeded = seed_demo_community(user_ids=[p.user_id for p in customers], now=NOW)
    assert len(seeded.operators) == 6 and all(op.is_staff for op in seeded.operators)
    assert [t.user_set.count() for t in seeded.teams] == [2, 4]
    assert len(seeded.groups) == 12 and OperatorAccount.objects.filter(operator__isnull=True).count() == 0
    contacts = Contact.objects.count()
    assert 20 <= contacts <= 50 and Membership.objects.count() > 10

    funnel = community_funnel(start=NOW - timedelta(days=120), end=NOW - timedelta(days=90), as_of=NOW)
    assert [s["count"] for s in funnel["overall"]][:3] == [60, contacts, contacts]
    assert any(g["members"] for g in group_health(as_of=NOW))
    run = compute_contribution_scores(month=NOW.date().replace(month=5, day=1), now=NOW)
    assert run.operators == 6 and run.teams == 2

    again = seed_demo_community(user_ids=[p.user_id for p in customers], now=NOW)
    assert again.events == 0 and Contact.objects.count() == contacts
    assert Group.objects.filter(name__startswith="Community team").count() == 2


def test_seeded_app_lists_feed_the_competitor_page():
    customers = [CustomerFactory(user_id=f"app-{i}") for i in range(30)]
    for p in customers:
        paid_order(p, "10.00", NOW - timedelta(days=45))
    seed_demo_community(user_ids=[p.user_id for p in customers], now=NOW)
    result = competitor_apps(as_of=NOW, days=30)
    assert result["people"] == 30 and result["apps"]
    assert [a["users"] for a in result["apps"]] == sorted((a["users"] for a in result["apps"]), reverse=True)


def test_seeding_refuses_teams_larger_than_the_operators():
    with pytest.raises(ValueError, match="teams hold more operators"):
        seed_demo_community(user_ids=[], operators=2, teams=(2, 2))
