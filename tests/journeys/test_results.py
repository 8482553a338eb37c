"""A journey measured against its holdout: the holdout is assigned but enters no step and gets
no message; each arm (the variant a person entered with) is compared with it on the goal, with the
campaigns' always-valid statistics, in the API, on the journey page and in the material's history;
an A/B of the first send (a send step without a variant) and a path per arm (a branch on the
variant)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone, translation

from campaigns.models import Assignment, AssignmentRole, CampaignStatus, Delivery, Variant
from campaigns.selectors import campaign_results
from journeys import errors, selectors, services
from journeys.models import JourneyRun
from materials import selectors as material_selectors
from tests.factories.campaigns import CampaignFactory, add_events, make_profiles
from tests.factories.materials import MaterialFactory, MaterialVersionFactory

pytestmark = pytest.mark.django_db


def _journey(steps, *, people=40, variants=(("A", 100),), **fields):
    profiles = make_profiles(people)
    campaign = CampaignFactory(variants=list(variants), **fields)
    names = dict(campaign.variants.values_list("name", "pk"))
    services.set_steps(campaign=campaign, steps=[{**s, "variant": names.get(s.get("variant"))} for s in steps])
    return campaign, profiles


def test_the_holdout_is_assigned_enters_no_step_and_gets_no_message():
    campaign, people = _journey(
        [{"kind": "send", "variant": "A"}, {"kind": "wait", "wait_minutes": 5}, {"kind": "send", "variant": "A"}],
        holdout_percent=Decimal(25),
    )
    t0 = timezone.now()
    assert services.launch_journey(campaign=campaign, now=t0) == 30
    services.advance_due(now=t0)
    services.advance_due(now=t0 + dt.timedelta(minutes=6))
    held = set(
        Assignment.objects.filter(campaign=campaign, role=AssignmentRole.HOLDOUT).values_list("profile_id", flat=True)
    )
    assert len(held) == 10 and Assignment.objects.filter(campaign=campaign).count() == len(people)
    assert not JourneyRun.objects.filter(campaign=campaign, profile_id__in=held).exists()
    assert not Delivery.objects.filter(campaign=campaign, profile_id__in=held).exists()
    # Everyone else got both steps.
    assert Delivery.objects.filter(campaign=campaign).count() == 2 * 30


def _convert(campaign, profiles, *, after: dt.datetime) -> None:
    add_events([(p.user_id, campaign.goal_event, after + dt.timedelta(minutes=1)) for p in profiles])


def test_the_result_compares_the_entrants_with_the_holdout_with_always_valid_numbers(api_client):
    campaign, people = _journey([{"kind": "send", "variant": "A"}], people=200, holdout_percent=Decimal(50))
    t0 = timezone.now()
    services.launch_journey(campaign=campaign, now=t0)
    services.advance_due(now=t0)
    entrants = list(JourneyRun.objects.filter(campaign=campaign).values_list("profile_id", flat=True))
    holdout = [p for p in people if p.pk not in set(entrants)]
    by_pk = {p.pk: p for p in people}
    # 60 of the 100 entrants convert, 20 of the 100 held out.
    _convert(campaign, [by_pk[pk] for pk in entrants[:60]], after=t0)
    _convert(campaign, holdout[:20], after=t0)
    data = api_client.get(f"/api/v1/campaigns/{campaign.pk}/journey").json()
    results = data["results"]
    assert results["control"] == "holdout" and results["has_holdout"] is True
    assert results["uplift_unit"] == "percentage points"
    groups = {g["name"]: g for g in results["groups"]}
    assert (groups["holdout"]["assigned"], groups["holdout"]["entered"], groups["holdout"]["converted"]) == (100, 0, 20)
    arm = groups["A"]
    assert (arm["assigned"], arm["entered"], arm["converted"]) == (100, 100, 60)
    assert arm["uplift_points"] == pytest.approx(40.0)
    # The campaigns' own always-valid interval and p-value, in points.
    reference = next(g for g in campaign_results(campaign)["groups"] if g["name"] == "A")["sequential"]
    assert arm["p_value"] == pytest.approx(reference["p_value"]) and arm["p_value"] < 0.05
    assert arm["uplift_ci_low_points"] == pytest.approx(reference["uplift_ci_low"] * 100, abs=1e-3)
    assert 0 < arm["uplift_ci_low_points"] < 40 < arm["uplift_ci_high_points"]
    assert arm["rate_ci_low"] < 0.6 < arm["rate_ci_high"]


def test_the_journey_page_shows_the_result_with_a_chart(client, make_staff):
    client.force_login(make_staff("Operations"))
    campaign, _people = _journey([{"kind": "send", "variant": "A"}], people=20, holdout_percent=Decimal(50))
    services.launch_journey(campaign=campaign)
    page = client.get(reverse("admin:journeys_journey_steps", args=[campaign.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert 'id="journey-results"' in html and 'id="journey-results-chart"' in html
    chart = page.context["results_chart"]
    assert chart["labels"] == ["holdout", "A"] and len(chart["rates"]) == 2
    # The legend reads in the operator's language; variants keep the names they were given.
    with translation.override("zh-hans"):
        chinese = client.get(
            reverse("admin:journeys_journey_steps", args=[campaign.pk]), HTTP_ACCEPT_LANGUAGE="zh-hans"
        )
    assert chinese.context["results_chart"]["labels"] == ["对照组", "A"]


def test_a_draft_journey_has_no_result_yet():
    campaign, _people = _journey([{"kind": "send", "variant": "A"}], people=3)
    assert selectors.journey(campaign)["results"] is None


def test_a_send_without_a_variant_sends_each_arm_its_own_and_each_arm_has_its_result():
    campaign, _people = _journey(
        [{"kind": "send"}, {"kind": "wait", "wait_minutes": 5}, {"kind": "send", "variant": "C"}],
        people=60,
        variants=(("A", 50), ("B", 50), ("C", 0)),
        holdout_percent=Decimal(20),
    )
    t0 = timezone.now()
    assert services.launch_journey(campaign=campaign, now=t0) == 48
    services.advance_due(now=t0)
    first = campaign.journey_steps.get(position=0).phase
    arm_of = dict(Assignment.objects.filter(campaign=campaign).values_list("profile_id", "variant_id"))
    sent = list(Delivery.objects.filter(campaign=campaign, phase=first).values_list("profile_id", "variant_id"))
    assert len(sent) == 48 and all(variant == arm_of[pk] for pk, variant in sent)
    names = dict(Variant.objects.filter(campaign=campaign).values_list("pk", "name"))
    assert {names[v] for _pk, v in sent} == {"A", "B"}
    groups = {g["name"]: g for g in selectors.results(campaign)["groups"]}
    assert groups["A"]["entered"] == groups["B"]["entered"] == 24 and groups["holdout"]["assigned"] == 12


def test_a_branch_on_the_variant_gives_each_arm_its_own_path():
    campaign, _people = _journey(
        [
            {"kind": "branch", "branch_on": "variant", "variant": "B", "goto": 3},
            {"kind": "send", "variant": "A"},
            {"kind": "branch", "branch_on": "variant", "variant": "A", "goto": 4},
            {"kind": "send", "variant": "B"},
        ],
        people=20,
        variants=(("A", 50), ("B", 50)),
        holdout_percent=Decimal(0),
    )
    services.launch_journey(campaign=campaign)
    services.advance_due()
    arm_of = dict(JourneyRun.objects.filter(campaign=campaign).values_list("profile_id", "variant_id"))
    got = list(Delivery.objects.filter(campaign=campaign).values_list("profile_id", "variant_id"))
    assert len(got) == 20 and all(arm_of[pk] == variant for pk, variant in got)


def test_a_pilot_or_a_bandit_is_refused_for_a_journey_with_the_field():
    campaign, _people = _journey([{"kind": "send", "variant": "A"}], people=2, pilot_percent=Decimal(10))
    with pytest.raises(errors.InvalidConfiguration) as refused:
        services.launch_journey(campaign=campaign)
    assert "pilot_percent" in refused.value.extra["fields"]
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.DRAFT and not campaign.assignments.exists()


def test_a_branch_on_an_unknown_variant_is_refused_with_the_step():
    campaign = CampaignFactory(variants=[("A", 100)])
    with pytest.raises(errors.InvalidSteps) as refused:
        services.set_steps(campaign=campaign, steps=[{"kind": "branch", "branch_on": "variant", "goto": 1}])
    assert "variant" in refused.value.extra["fields"]["steps[0]"]


def test_the_materials_history_shows_the_journeys_effect_against_its_holdout():
    version = MaterialVersionFactory(approved=True, material=MaterialFactory(channel="push"))
    campaign, people = _journey([{"kind": "send", "variant": "A"}], people=40, holdout_percent=Decimal(50))
    Variant.objects.filter(campaign=campaign).update(material_version=version, title="", body="", url="")
    t0 = timezone.now()
    services.launch_journey(campaign=campaign, now=t0)
    services.advance_due(now=t0)
    entrants = set(JourneyRun.objects.filter(campaign=campaign).values_list("profile_id", flat=True))
    _convert(campaign, [p for p in people if p.pk in entrants][:10], after=t0)
    rows = [r for r in material_selectors.material_history(version.material) if r["campaign"] == campaign.pk]
    assert len(rows) == 1
    row = rows[0]
    assert row["had_holdout"] is True and row["assigned"] == 20 and row["converted"] == 10
    assert row["uplift_vs_holdout"] == pytest.approx(0.5)


def test_every_group_is_measured_from_entry_over_the_same_window():
    # The arm's message comes after a three-day wait, longer than the 72 h attribution window:
    # counting the arm from its message and the holdout from entry would credit the arm with
    # conversions the holdout could never have in its window.
    campaign, people = _journey(
        [{"kind": "wait", "wait_minutes": 3 * 24 * 60}, {"kind": "send", "variant": "A"}],
        people=40,
        holdout_percent=Decimal(50),
        attribution_hours=72,
    )
    t0 = timezone.now()
    services.launch_journey(campaign=campaign, now=t0)
    later = t0 + dt.timedelta(days=3, minutes=1)
    services.advance_due(now=later)
    entrants = set(JourneyRun.objects.filter(campaign=campaign).values_list("profile_id", flat=True))
    arm = [p for p in people if p.pk in entrants]
    holdout = [p for p in people if p.pk not in entrants]
    assert len(arm) == len(holdout) == 20
    # Five of each group convert on the first day, five more of each after the third.
    _convert(campaign, arm[:5] + holdout[:5], after=t0 + dt.timedelta(hours=2))
    _convert(campaign, arm[5:10] + holdout[5:10], after=t0 + dt.timedelta(days=3, hours=2))
    groups = {g["name"]: g for g in selectors.results(campaign)["groups"]}
    assert groups["A"]["converted"] == groups["holdout"]["converted"] == 5
    assert groups["A"]["entered"] == 20 and groups["holdout"]["entered"] == 0
