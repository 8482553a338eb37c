"""Rule tags and preference tags: compiled SQL selections, the chi-square, and change history."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from scipy import stats

from profiles import selectors, services
from profiles.models import ProfileTag, Tag, TagChange, TagRule
from tests.factories.profiles import PreferenceRuleFactory, ProfileFactory, TagRuleFactory, bulk_events

pytestmark = pytest.mark.django_db


def members(tag_name: str) -> set[str]:
    return set(ProfileTag.objects.filter(tag__name=tag_name).values_list("profile__user_id", flat=True))


def orders(user_id: str, count: int, days_ago: int) -> list[tuple]:
    at = timezone.now() - timedelta(days=days_ago)
    return [(user_id, "order_paid", at, {"amount": "10.00"}) for _ in range(count)]


def test_rule_tag_selects_profiles_with_enough_events_in_the_window_and_a_matching_city():
    for user_id, city in [("u-3-sh", "Shanghai"), ("u-2-sh", "Shanghai"), ("u-3-bj", "Beijing"), ("u-old", "Shanghai")]:
        ProfileFactory(user_id=user_id, city=city)
    bulk_events(orders("u-3-sh", 3, 2) + orders("u-2-sh", 2, 2) + orders("u-3-bj", 4, 5) + orders("u-old", 5, 45))
    rule = TagRuleFactory(
        tag_name="shanghai-buyer",
        conditions=[
            {"event": "order_paid", "within_days": 30, "op": "gte", "count": 3},
            {"trait": "city", "op": "in", "value": ["Shanghai", "Hangzhou"]},
        ],
    )
    result = services.recompute_tag_rule(rule_id=rule.id)
    assert members("shanghai-buyer") == {"u-3-sh"}
    assert (result.added, result.removed, result.members) == (1, 0, 1)
    tag = Tag.objects.get(name="shanghai-buyer")
    assert (tag.source, tag.rule_id, tag.computed_at is not None) == ("rule", rule.id, True)


def test_rule_with_at_most_condition_includes_profiles_without_any_event():
    ProfileFactory(user_id="quiet")
    ProfileFactory(user_id="busy")
    bulk_events([("busy", "app_open", timezone.now() - timedelta(days=1), {})] * 3)
    rule = TagRuleFactory(
        tag_name="dormant", conditions=[{"event": "app_open", "within_days": 7, "op": "lte", "count": 1}]
    )
    services.recompute_tag_rule(rule_id=rule.id)
    assert members("dormant") == {"quiet"}


def test_rule_on_custom_trait_compares_numbers_numerically():
    ProfileFactory(user_id="lvl-9", traits={"level": 9})
    ProfileFactory(user_id="lvl-10", traits={"level": 10})
    ProfileFactory(user_id="lvl-text", traits={"level": "high"})
    rule = TagRuleFactory(tag_name="senior", conditions=[{"trait": "level", "op": "gte", "value": 10}])
    services.recompute_tag_rule(rule_id=rule.id)
    assert members("senior") == {"lvl-10"}


def test_recompute_removes_profiles_that_no_longer_match_and_records_both_directions():
    ProfileFactory(user_id="mover", city="Shanghai")
    ProfileFactory(user_id="arrival", city="Beijing")
    rule = TagRuleFactory(tag_name="in-shanghai", conditions=[{"trait": "city", "op": "eq", "value": "Shanghai"}])
    services.recompute_tag_rule(rule_id=rule.id)
    week_start = timezone.now()
    from profiles.models import Profile

    Profile.objects.filter(user_id="mover").update(city="Beijing")
    Profile.objects.filter(user_id="arrival").update(city="Shanghai")
    result = services.recompute_tag_rule(rule_id=rule.id)
    assert (result.added, result.removed) == (1, 1)
    assert members("in-shanghai") == {"arrival"}
    changes = set(TagChange.objects.filter(tag__name="in-shanghai").values_list("profile__user_id", "action"))
    assert changes == {("mover", "added"), ("mover", "removed"), ("arrival", "added")}
    became = selectors.profiles_that_gained("in-shanghai", since=week_start)
    assert became == [Profile.objects.get(user_id="arrival").id]


def test_recompute_twice_records_no_changes_the_second_time():
    ProfileFactory(user_id="steady", city="Shanghai")
    rule = TagRuleFactory(tag_name="steady-sh", conditions=[{"trait": "city", "op": "eq", "value": "Shanghai"}])
    services.recompute_tag_rule(rule_id=rule.id)
    again = services.recompute_tag_rule(rule_id=rule.id)
    assert (again.added, again.removed, again.members) == (0, 0, 1)
    assert TagChange.objects.filter(tag__name="steady-sh").count() == 1


def test_merged_profiles_are_never_tagged_by_rules():
    survivor = ProfileFactory(user_id="survivor", city="Shanghai")
    ProfileFactory(user_id="ghost", city="Shanghai", merged_into=survivor)
    rule = TagRuleFactory(tag_name="sh", conditions=[{"trait": "city", "op": "eq", "value": "Shanghai"}])
    services.recompute_tag_rule(rule_id=rule.id)
    assert members("sh") == {"survivor"}


@pytest.mark.parametrize(
    "conditions",
    [
        [],
        [{"trait": "city", "op": "like", "value": "x"}],
        [{"trait": "birth_date", "op": "gte", "value": "yesterday"}],
        [{"event": "order_paid", "within_days": 0, "op": "gte", "count": 3}],
        [{"event": "DROP TABLE", "within_days": 3, "op": "gte", "count": 3}],
        [{"trait": "name; --", "op": "eq", "value": "x"}],
        [{"neither": 1}],
    ],
)
def test_invalid_rule_conditions_are_refused_with_a_reason(conditions):
    rule = TagRule(name="bad", tag_name="bad", conditions=conditions)
    with pytest.raises(ValidationError) as caught:
        rule.full_clean()
    assert "conditions" in caught.value.message_dict


def make_reading_population(rng: np.random.Generator, users: int = 60) -> dict[str, dict[str, int]]:
    """Readers of four categories; a third of them lean strongly towards one category."""
    categories = ["technology", "sports", "finance", "culture"]
    base = np.array([0.25, 0.35, 0.2, 0.2])
    counts: dict[str, dict[str, int]] = {}
    rows = []
    at = timezone.now() - timedelta(days=3)
    for i in range(users):
        user_id = f"reader-{i:03d}"
        ProfileFactory(user_id=user_id)
        shares = base.copy()
        if i % 3 == 0:
            shares = np.full(4, 0.1)
            shares[i % 4] = 0.7
        draws = rng.choice(4, size=int(rng.integers(10, 40)), p=shares / shares.sum())
        counts[user_id] = {c: int((draws == k).sum()) for k, c in enumerate(categories)}
        rows += [(user_id, "article_read", at, {"category": categories[k]}) for k in draws]
    # Reads outside the window or of another event name must not count.
    rows += [("reader-000", "article_read", timezone.now() - timedelta(days=90), {"category": "culture"})] * 50
    rows += [("reader-000", "article_liked", at, {"category": "culture"})] * 50
    bulk_events(rows)
    return counts


def test_preference_tags_match_an_independent_scipy_chi_square_per_user_and_category():
    counts = make_reading_population(np.random.default_rng(20240611))
    rule = PreferenceRuleFactory(min_count=5, p_value_threshold=0.01, window_days=30)
    services.recompute_tag_rule(rule_id=rule.id)

    totals = {c: sum(u[c] for u in counts.values()) for c in ["technology", "sports", "finance", "culture"]}
    grand = sum(totals.values())
    expected_members: dict[tuple[str, str], float] = {}
    for user_id, per_category in counts.items():
        n = sum(per_category.values())
        for category, observed in per_category.items():
            share = totals[category] / grand
            exp = n * share
            if observed < 5 or observed <= exp:
                continue
            result = stats.chisquare([observed, n - observed], [exp, n - exp])
            if result.pvalue < 0.01:
                expected_members[(user_id, f"prefers_{category}")] = float(np.sqrt(result.statistic / n))

    got = {
        (pt.profile.user_id, pt.tag.name): pt.score
        for pt in ProfileTag.objects.filter(tag__rule=rule).select_related("profile", "tag")
    }
    assert expected_members, "the generated population should hold some clear preferences"
    assert set(got) == set(expected_members)
    for key, effect in expected_members.items():
        assert got[key] == pytest.approx(effect, abs=1e-5)
    assert all(t.source == "statistical" and t.category == "preference" for t in Tag.objects.filter(rule=rule))


def test_preference_tag_respects_the_minimum_count():
    ProfileFactory(user_id="few")
    ProfileFactory(user_id="many")
    at = timezone.now() - timedelta(days=1)
    rows = [("few", "article_read", at, {"category": "tech"})] * 3
    rows += [("many", "article_read", at, {"category": "sports"})] * 200
    for i in range(40):
        ProfileFactory(user_id=f"bg-{i}")
        rows += [(f"bg-{i}", "article_read", at, {"category": "sports"})] * 5
    bulk_events(rows)
    rule = PreferenceRuleFactory(min_count=4, p_value_threshold=0.05)
    services.recompute_tag_rule(rule_id=rule.id)
    assert members("prefers_tech") == set()
    rule.min_count = 3
    rule.save()
    services.recompute_tag_rule(rule_id=rule.id)
    assert members("prefers_tech") == {"few"}
