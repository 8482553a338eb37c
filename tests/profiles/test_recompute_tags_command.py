"""`manage.py recompute_tags`: every active tag rule (or those named) recomputed by hand as at
night, with per-rule numbers that are the database's, and exit 1 naming a failing rule."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import CommandError, call_command

from profiles.models import ProfileTag, TagRule
from tests.factories.profiles import ProfileFactory, TagRuleFactory

pytestmark = pytest.mark.django_db


def recompute(*args: str) -> str:
    out = io.StringIO()
    call_command("recompute_tags", "--no-progress", *args, stdout=out)
    return out.getvalue()


def city_rule(name: str, city: str, **kwargs) -> TagRule:
    return TagRuleFactory(
        name=name, tag_name=f"in-{city.lower()}", conditions=[{"trait": "city", "op": "eq", "value": city}], **kwargs
    )


@pytest.fixture
def cities() -> None:
    for i in range(3):
        ProfileFactory(user_id=f"sh-{i}", city="Shanghai")
    for i in range(2):
        ProfileFactory(user_id=f"bj-{i}", city="Beijing")
    ProfileFactory(user_id="gz-0", city="Guangzhou")


def test_every_active_rule_is_recomputed_and_the_summary_matches_the_database(cities):
    city_rule("Shanghai", "Shanghai")
    city_rule("Beijing", "Beijing")
    city_rule("Guangzhou", "Guangzhou", is_active=False)
    text = recompute()
    for name, tag in (("Shanghai", "in-shanghai"), ("Beijing", "in-beijing")):
        members = ProfileTag.objects.filter(tag__name=tag).count()
        assert f"  {name}: {members} member(s), +{members} -0 in " in text
        assert TagRule.objects.get(name=name).last_status == "done"
    assert not ProfileTag.objects.filter(tag__name="in-guangzhou").exists()
    assert TagRule.objects.get(name="Guangzhou").last_status == ""
    assert re.search(
        r"Recomputed 2 of 2 rule\(s\) in [\d.]+ s: 5 tag\(s\) added, 0 removed, 5 member\(s\) in all", text
    )
    again = recompute()
    assert "Shanghai: 3 member(s), +0 -0" in again


def test_rules_named_by_name_or_id_are_recomputed_even_when_inactive(cities):
    city_rule("Shanghai", "Shanghai")
    guangzhou = city_rule("Guangzhou", "Guangzhou", is_active=False)
    text = recompute("--rule", str(guangzhou.pk))
    assert "Guangzhou: 1 member(s)" in text and "Shanghai" not in text
    assert not ProfileTag.objects.filter(tag__name="in-shanghai").exists()
    with pytest.raises(CommandError, match="No tag rule 'Lhasa'"):
        recompute("--rule", "Lhasa")


def test_a_failing_rule_does_not_stop_the_others_and_exits_1_naming_it(cities):
    city_rule("Shanghai", "Shanghai")
    broken = city_rule("Broken", "Beijing")
    TagRule.objects.filter(pk=broken.pk).update(conditions=[{"trait": "city", "op": "like", "value": "x"}])
    out = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("recompute_tags", "--no-progress", stdout=out)
    assert caught.value.returncode == 1
    assert str(caught.value).startswith("1 rule(s) failed: Broken: RuleNotRunnable:")
    assert "Broken: FAILED RuleNotRunnable" in out.getvalue()
    assert ProfileTag.objects.filter(tag__name="in-shanghai").count() == 3
    assert TagRule.objects.get(pk=broken.pk).last_status == "failed"
