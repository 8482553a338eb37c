"""A tag rule whose recompute fails shows it (status and reason in the admin list and detail),
and one audited action queues it again; a later run that succeeds clears the failure."""

from __future__ import annotations

import logging

import pytest
from django.urls import reverse

from access.models import AuditEntry
from profiles import services
from profiles.errors import RuleNotRunnable, TagRuleNotFailed
from profiles.models import ProfileTag, TagRule
from tests.factories.profiles import ProfileFactory, TagRuleFactory

pytestmark = pytest.mark.django_db


def broken_rule() -> TagRule:
    rule = TagRuleFactory(tag_name="in-shanghai", conditions=[{"trait": "city", "op": "eq", "value": "Shanghai"}])
    TagRule.objects.filter(id=rule.id).update(conditions=[{"trait": "city", "op": "like", "value": "x"}])
    with pytest.raises(RuleNotRunnable):
        services.recompute_tag_rule(rule_id=rule.id)
    rule.refresh_from_db()
    return rule


def test_a_failing_recompute_marks_the_rule_failed_with_the_reason_and_logs_it(caplog):
    with caplog.at_level(logging.ERROR, logger="profiles.services"):
        rule = broken_rule()
    assert rule.last_status == "failed"
    assert rule.last_error.startswith("RuleNotRunnable: Rule 'Rule") and "not runnable" in rule.last_error
    assert any(r.exc_info and f"tag rule {rule.id} recompute failed" in r.getMessage() for r in caplog.records)


def test_retry_queues_a_failed_rule_once_and_a_good_run_clears_the_failure(django_capture_on_commit_callbacks):
    ProfileFactory(user_id="sh-1", city="Shanghai")
    rule = broken_rule()
    TagRule.objects.filter(id=rule.id).update(conditions=[{"trait": "city", "op": "eq", "value": "Shanghai"}])
    with django_capture_on_commit_callbacks() as queued:
        assert services.retry_tag_rule(rule_id=rule.id).last_status == "queued"
    assert len(queued) == 1
    with pytest.raises(TagRuleNotFailed):
        services.retry_tag_rule(rule_id=rule.id)
    services.recompute_tag_rule(rule_id=rule.id)  # what the queued task does
    rule.refresh_from_db()
    assert (rule.last_status, rule.last_error, rule.last_run_members) == ("done", "", 1)
    assert ProfileTag.objects.filter(tag__name="in-shanghai").count() == 1
    assert (
        AuditEntry.objects.get(action="profiles.tag_rule_retried")
        .details["previous_error"]
        .startswith("RuleNotRunnable")
    )


def test_admin_filters_failed_rules_shows_the_reason_and_retries_them(client, make_staff):
    client.force_login(make_staff("Operations"))
    rule = broken_rule()
    fine = TagRuleFactory(tag_name="fine")
    page = client.get(reverse("admin:profiles_tagrule_changelist"), {"last_status__exact": "failed"})
    html = page.content.decode()
    assert page.status_code == 200 and "RuleNotRunnable" in html and fine.name not in html
    assert "RuleNotRunnable" in client.get(reverse("admin:profiles_tagrule_change", args=[rule.pk])).content.decode()
    client.post(
        reverse("admin:profiles_tagrule_changelist"), {"action": "retry", "_selected_action": [rule.pk, fine.pk]}
    )
    rule.refresh_from_db()
    fine.refresh_from_db()
    assert (rule.last_status, fine.last_status) == ("queued", "")


def test_api_shows_the_last_run_and_retries_with_202_then_409_and_404(make_api_client):
    ops = make_api_client("manage")
    rule = broken_rule()
    shown = ops.get(f"/api/v1/tag-rules/{rule.pk}").json()
    assert (shown["last_status"], shown["last_error"]) == ("failed", rule.last_error)
    first = ops.post(f"/api/v1/tag-rules/{rule.pk}/retry")
    assert first.status_code == 202 and first.json()["last_status"] == "queued"
    again = ops.post(f"/api/v1/tag-rules/{rule.pk}/retry")
    assert again.status_code == 409 and again.json()["reason"] == "NOT_FAILED"
    assert ops.post("/api/v1/tag-rules/424242/retry").json()["reason"] == "TAG_RULE_NOT_FOUND"
    assert ops.get("/api/v1/tag-rules/x").status_code == 404
    assert AuditEntry.objects.get(action="profiles.tag_rule_retried").api_key_id == ops.api_key.pk
