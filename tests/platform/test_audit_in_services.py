"""Auditing happens in the services: no admin writes an audit row of its own, and an operator's
action leaves exactly one entry whether it comes through the admin or the API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from access.models import AuditEntry
from coupons.models import IssuanceJob
from crm.models import ScoringScheme, ValueTier
from profiles.models import ProfileTag
from tests.factories.coupons import CouponRuleFactory
from tests.factories.profiles import ProfileFactory

ROOT = Path(__file__).resolve().parents[2]


def test_no_admin_module_records_audit_entries_itself():
    callers = []
    for app in ("access", "profiles", "crm", "coupons", "campaigns"):
        for path in (ROOT / app).rglob("admin*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                    if name == "record_audit":
                        callers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert callers == []


@pytest.fixture
def operator(db, make_staff):
    user = make_staff(superuser=True)
    client = Client()
    client.force_login(user)
    client.user = user
    return client


def _entries(action: str) -> list[tuple]:
    return list(AuditEntry.objects.filter(action=action).values_list("object_id", "actor_id", "api_key_id"))


def test_a_segment_created_in_the_admin_or_the_api_is_audited_once_each(operator, make_api_client):
    response = operator.post(
        reverse("admin:campaigns_segment_add"), {"name": "Admin made", "definition": '{"tag": "vip"}'}
    )
    assert response.status_code == 302
    api = make_api_client("manage")
    created = api.post("/api/v1/segments", {"name": "API made", "definition": {"tag": "vip"}}, format="json")
    assert created.status_code == 201, created.content
    entries = _entries("campaigns.segment_created")
    assert len(entries) == 2
    by_admin, by_key = sorted(entries, key=lambda e: e[2] is not None)
    assert by_admin[1] == operator.user.pk and by_admin[2] is None
    assert by_key[1] is None and by_key[2] == api.api_key.pk
    assert by_key[0] == str(created.json()["id"])


def test_activating_a_scheme_in_the_admin_is_audited_once(operator):
    scheme = ScoringScheme.objects.create(name="Stricter", is_active=False)
    operator.post(
        reverse("admin:crm_scoringscheme_changelist"), {"action": "make_active", "_selected_action": [scheme.pk]}
    )
    assert ScoringScheme.objects.get(is_active=True) == scheme
    assert _entries("crm.scheme_activated") == [(str(scheme.pk), operator.user.pk, None)]


def test_deleting_tiers_in_bulk_audits_each_tier_once(operator):
    tiers = [ValueTier.objects.create(name=f"Tier {n}", slug=f"tier-{n}", rank=100 + n) for n in range(2)]
    operator.post(
        reverse("admin:crm_valuetier_changelist"),
        {"action": "delete_selected", "_selected_action": [t.pk for t in tiers], "post": "yes"},
    )
    assert not ValueTier.objects.filter(pk__in=[t.pk for t in tiers]).exists()
    assert sorted(e[0] for e in _entries("crm.tier_deleted")) == sorted(str(t.pk) for t in tiers)


def test_removing_tag_members_in_the_admin_audits_each_tag_once(operator):
    from profiles import services

    people = [ProfileFactory() for _ in range(3)]
    services.tag_profiles(tag_name="a", profile_ids=[p.pk for p in people])
    services.tag_profiles(tag_name="b", profile_ids=[people[0].pk])
    assert [e[1] for e in _entries("profiles.tag_added")] == [None, None]  # the system's, no actor
    rows = ProfileTag.objects.values_list("pk", flat=True)
    operator.post(
        reverse("admin:profiles_profiletag_changelist"),
        {"action": "delete_selected", "_selected_action": list(rows), "post": "yes"},
    )
    assert not ProfileTag.objects.exists()
    removed = AuditEntry.objects.filter(action="profiles.tag_removed")
    assert sorted((e.details["lost"], e.actor_id) for e in removed) == [
        (1, operator.user.pk),
        (3, operator.user.pk),
    ]


def test_resuming_jobs_in_the_admin_audits_only_the_jobs_it_queues(operator, django_capture_on_commit_callbacks):
    rule = CouponRuleFactory()
    pending = IssuanceJob.objects.create(rule=rule, user_ids=["u1"])
    done = IssuanceJob.objects.create(rule=rule, user_ids=["u2"], status=IssuanceJob.Status.DONE)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        operator.post(
            reverse("admin:coupons_issuancejob_changelist"),
            {"action": "resume", "_selected_action": [pending.pk, done.pk]},
        )
    assert len(queued) == 1
    assert _entries("coupons.issuance_job_resumed") == [(str(pending.pk), operator.user.pk, None)]
