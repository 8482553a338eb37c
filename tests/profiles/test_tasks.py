"""Tag rules recomputed by a real Celery worker, and the nightly beat schedule."""

from __future__ import annotations

import time

import pytest

from profiles import tasks
from profiles.models import ProfileTag, TagRule
from tests.factories.profiles import ProfileFactory, TagRuleFactory


def test_worker_recomputes_a_rule_on_demand(celery_worker):
    ProfileFactory(user_id="w-sh", city="Shanghai")
    ProfileFactory(user_id="w-bj", city="Beijing")
    rule = TagRuleFactory(tag_name="worker-sh", conditions=[{"trait": "city", "op": "eq", "value": "Shanghai"}])
    result = tasks.recompute_tag_rule.delay(rule.id).get(timeout=60)
    assert result == {"rule_id": rule.id, "added": 1, "removed": 0, "members": 1}
    assert list(ProfileTag.objects.filter(tag__name="worker-sh").values_list("profile__user_id", flat=True)) == ["w-sh"]
    rule.refresh_from_db()
    assert rule.last_run_members == 1 and rule.last_error == ""


def test_nightly_run_recomputes_every_active_rule_and_skips_inactive_ones(celery_worker):
    ProfileFactory(user_id="n-1", city="Shanghai")
    active = TagRuleFactory(tag_name="night-a", conditions=[{"trait": "city", "op": "eq", "value": "Shanghai"}])
    TagRuleFactory(tag_name="night-b", is_active=False, conditions=[{"trait": "city", "op": "eq", "value": "Shanghai"}])
    assert tasks.recompute_tag_rules.delay().get(timeout=60) == [active.id]
    deadline = time.monotonic() + 60
    while not TagRule.objects.get(id=active.id).last_run_at and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ProfileTag.objects.filter(tag__name="night-a").count() == 1
    assert not ProfileTag.objects.filter(tag__name="night-b").exists()


def test_a_failing_rule_records_its_error(celery_worker):
    rule = TagRuleFactory(tag_name="broken")
    TagRule.objects.filter(id=rule.id).update(conditions=[{"trait": "city", "op": "like", "value": "x"}])
    with pytest.raises(Exception, match="not runnable"):
        tasks.recompute_tag_rule.delay(rule.id).get(timeout=60)
    rule.refresh_from_db()
    assert "not runnable" in rule.last_error


@pytest.mark.django_db
def test_nightly_schedule_exists_as_an_editable_beat_row():
    from django_celery_beat.models import PeriodicTask

    task = PeriodicTask.objects.get(task="profiles.tasks.recompute_tag_rules")
    assert task.enabled and (task.crontab.hour, task.crontab.minute) == ("2", "30")
