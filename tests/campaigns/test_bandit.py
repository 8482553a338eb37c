"""Bandit allocation of recurring and triggered campaigns: Thompson sampling on margin net of
coupon cost moves newcomers to the better variants, at most every N minutes, each variant with
budget keeping its floor, none given to a variant whose coupon budget is spent, the holdout fixed;
the sample-ratio check follows the shares in force at each assignment; a failed step shows."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

import numpy as np
import pytest
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from access.models import AuditEntry
from campaigns import bandit, services
from campaigns.models import Allocation, Assignment, Campaign, CampaignStatus, ChannelKind
from campaigns.selectors import campaign_results
from coupons import services as coupon_services
from coupons.models import CouponRule
from tests.factories.campaigns import CampaignFactory, ChannelFactory, SegmentFactory, add_events, make_profiles
from tests.factories.coupons import CouponRuleFactory

pytestmark = pytest.mark.django_db

LONG_AGO = dt.timedelta(days=4)  # past the 72-hour attribution window


# --- the allocation on its own -----------------------------------------------------------------


@st.composite
def configurations(draw):
    k = draw(st.integers(min_value=1, max_value=8))
    holdout = draw(st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.5, 0.9]))
    floor = draw(st.floats(min_value=0.0, max_value=(1 - holdout) / k))
    arms = []
    for i in range(k):
        members = draw(st.integers(min_value=0, max_value=5000))
        orders = draw(st.integers(min_value=0, max_value=members))
        values = draw(st.lists(st.floats(min_value=-50, max_value=500), min_size=orders, max_size=orders))
        arms.append(
            bandit.ArmData(
                key=str(i),
                members=members,
                orders=orders,
                value_sum=float(sum(values)),
                value_sq_sum=float(sum(v * v for v in values)),
                exhausted=draw(st.booleans()),
            )
        )
    if all(a.exhausted for a in arms):
        arms[draw(st.integers(min_value=0, max_value=k - 1))] = bandit.ArmData(key="live")
    return arms, holdout, floor


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configuration=configurations(), seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_shares_sum_to_one_with_the_holdout_every_arm_keeps_its_floor_and_spent_arms_get_nothing(configuration, seed):
    arms, holdout, floor = configuration
    shares, p_best = bandit.allocate(arms, holdout=holdout, floor=floor, rng=np.random.default_rng(seed), draws=500)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-9)
    assert shares.get(bandit.HOLDOUT, 0.0) == pytest.approx(holdout, abs=1e-12)
    for arm in arms:
        if arm.exhausted:
            assert shares[arm.key] == 0.0
        else:
            assert shares[arm.key] >= floor - 1e-9
    assert sum(p_best.values()) == pytest.approx(1.0)


def test_every_arm_out_of_budget_is_refused_with_the_reason():
    with pytest.raises(bandit.AllocationError, match="coupon budget is spent"):
        bandit.allocate([bandit.ArmData("1", exhausted=True)], holdout=0.1, floor=0.05, rng=np.random.default_rng())


def test_the_arm_with_the_best_margin_per_member_wins_even_against_more_orders():
    # C orders more often, but its coupon costs more than the margin: B is the best by reward.
    arms = [
        bandit.ArmData("A", members=1000, orders=50, value_sum=50 * 30.0, value_sq_sum=50 * 30.0**2 * 1.1),
        bandit.ArmData("B", members=1000, orders=200, value_sum=200 * 30.0, value_sq_sum=200 * 30.0**2 * 1.1),
        bandit.ArmData("C", members=1000, orders=300, value_sum=300 * -4.0, value_sq_sum=300 * 16.0 * 1.1),
    ]
    shares, p_best = bandit.allocate(arms, holdout=0.1, floor=0.05, rng=np.random.default_rng(1))
    assert p_best["B"] > 0.99
    assert shares == pytest.approx({"holdout": 0.1, "A": 0.05, "B": 0.8, "C": 0.05})


def test_without_any_order_the_arms_split_evenly_in_expectation():
    arms = [bandit.ArmData(str(i), members=100) for i in range(3)]
    _shares, p_best = bandit.allocate(arms, holdout=0.0, floor=0.0, rng=np.random.default_rng(3))
    assert all(abs(p - 1 / 3) < 0.03 for p in p_best.values())


# --- in the campaign ---------------------------------------------------------------------------


@pytest.fixture
def push_gateway():
    return ChannelFactory(kind=ChannelKind.PUSH, url="http://127.0.0.1:9/never")


def _launched_bandit(**fields) -> Campaign:
    campaign = CampaignFactory(
        **{
            "schedule_kind": "trigger",
            "trigger_event": "cart_abandoned",
            "holdout_percent": Decimal(10),
            "allocation": "thompson",
            "bandit_floor_percent": Decimal(5),
            "bandit_interval_minutes": 60,
            "margin_percent": Decimal(30),
            "bandit_seed": 7,
            "variants": [("A", 50), ("B", 50), ("C", 50)],
            **fields,
        }
    )
    services.launch_campaign(campaign_id=campaign.pk)
    campaign.refresh_from_db()
    return campaign


def _arrive(campaign: Campaign, profiles) -> None:
    services.snapshot_audience(campaign=campaign, mode="arrival", only_profile_ids=[p.pk for p in profiles])


def _age_assignments(campaign: Campaign) -> None:
    Assignment.objects.filter(campaign=campaign).update(assigned_at=timezone.now() - LONG_AGO)


def _orders(campaign: Campaign, rates: dict[str, float], amount: str = "100.00") -> None:
    """Orders an hour after assignment by the first `rate` of each variant's members."""
    for name, rate in rates.items():
        members = list(
            Assignment.objects.filter(campaign=campaign, variant__name=name)
            .order_by("id")
            .values_list("user_id", "assigned_at")
        )
        buyers = members[: round(len(members) * rate)]
        add_events([(u, "order_paid", at + dt.timedelta(hours=1)) for u, at in buyers], {"amount": amount})


def _shares_by_name(campaign: Campaign, allocation: Allocation) -> dict[str, float]:
    names = {str(v.pk): v.name for v in campaign.variants.all()}
    return {names.get(k, k): v for k, v in allocation.shares.items()}


def test_launching_a_bandit_stores_its_first_shares_from_the_weights(push_gateway):
    campaign = _launched_bandit(variants=[("A", 20), ("B", 60), ("C", 20)])
    (allocation,) = Allocation.objects.filter(campaign=campaign)
    assert allocation.reason == "launch"
    assert _shares_by_name(campaign, allocation) == pytest.approx({"holdout": 0.1, "A": 0.18, "B": 0.54, "C": 0.18})


def test_reallocation_moves_newcomers_to_the_variant_with_the_best_margin_and_keeps_the_holdout(push_gateway):
    campaign = _launched_bandit()
    profiles = make_profiles(1500)
    _arrive(campaign, profiles[:600])
    _age_assignments(campaign)
    _orders(campaign, {"A": 0.05, "B": 0.30, "C": 0.10})
    later = timezone.now() + dt.timedelta(minutes=61)
    allocation = services.reallocate(campaign_id=campaign.pk, now=later)
    assert allocation is not None and allocation.reason == "thompson"
    shares = _shares_by_name(campaign, allocation)
    assert shares["holdout"] == pytest.approx(0.1)
    assert shares["B"] == pytest.approx(0.8, abs=0.01) and shares["A"] == shares["C"] == pytest.approx(0.05, abs=0.01)
    assert allocation.details["arms"][str(campaign.variants.get(name="B").pk)]["orders"] == 54
    # Newcomers from now on follow the new shares, within one person of each.
    _arrive(campaign, profiles[600:])
    fresh = Assignment.objects.filter(campaign=campaign, allocation=allocation)
    assert fresh.count() == 900
    for name, share in shares.items():
        group = fresh.filter(role="holdout") if name == "holdout" else fresh.filter(variant__name=name)
        assert abs(group.count() - 900 * share) <= 1, (name, group.count())
    audit = AuditEntry.objects.filter(action="campaigns.shares_reallocated").latest("id")
    assert audit.details["shares"]["B"] == pytest.approx(shares["B"], abs=1e-4)


def test_the_reward_is_the_margin_of_orders_in_the_window_net_of_the_campaigns_coupon_discounts(push_gateway):
    rule = CouponRuleFactory(value=Decimal("20.00"))
    campaign = _launched_bandit()
    c = campaign.variants.get(name="C")
    c.coupon_rule_id = rule.pk
    c.save()
    _arrive(campaign, make_profiles(600))
    _age_assignments(campaign)
    # B: 20 % order 100 (margin 30 each). C: 40 % order 50 with its 20-off coupon (15 - 20 = -5
    # each): more orders, less margin. A: 5 % order 100. An order after the window counts nothing.
    _orders(campaign, {"A": 0.05, "B": 0.20})
    c_members = list(Assignment.objects.filter(campaign=campaign, variant=c).order_by("id").select_related("profile"))
    buyers = c_members[: round(len(c_members) * 0.4)]
    for i, member in enumerate(buyers):
        coupon = coupon_services.issue_coupon(
            rule=rule, profile=member.profile, request_id=f"c{i}", source="campaign", source_ref=c.source_ref
        )
        coupon_services.redeem_coupon(
            code=coupon.code, user_id=member.user_id, order_id=f"o{i}", order_amount=Decimal("50.00")
        )
    add_events([(m.user_id, "order_paid", m.assigned_at + dt.timedelta(hours=2)) for m in buyers], {"amount": "50.00"})
    late = Assignment.objects.filter(campaign=campaign, variant__name="A").order_by("-id").first()
    add_events([(late.user_id, "order_paid", late.assigned_at + dt.timedelta(hours=80))], {"amount": "999.00"})
    # Newcomers whose window is still open are not counted yet, not even as members without an order.
    _arrive(campaign, make_profiles(30, prefix="new"))
    allocation = services.reallocate(campaign_id=campaign.pk, now=timezone.now() + dt.timedelta(minutes=61))
    arms = {v["name"]: v for v in allocation.details["arms"].values()}
    assert (arms["C"]["members"], arms["C"]["orders"], arms["C"]["net_value"]) == (180, 72, -5.0 * 72)
    assert (arms["B"]["orders"], arms["B"]["net_value"]) == (36, 30.0 * 36)
    assert (arms["A"]["orders"], arms["A"]["net_value"]) == (9, 30.0 * 9)
    assert sum(a["members"] for a in arms.values()) == 540
    assert arms["B"]["p_best"] > 0.99
    assert _shares_by_name(campaign, allocation)["B"] == pytest.approx(0.8, abs=0.01)


def test_shares_change_at_most_once_per_interval(push_gateway):
    campaign = _launched_bandit(bandit_interval_minutes=30)
    launch = Allocation.objects.get(campaign=campaign)
    assert services.reallocate(campaign_id=campaign.pk, now=launch.valid_from + dt.timedelta(minutes=29)) is None
    first = services.reallocate(campaign_id=campaign.pk, now=launch.valid_from + dt.timedelta(minutes=30))
    assert first is not None
    assert services.reallocate(campaign_id=campaign.pk, now=first.valid_from + dt.timedelta(minutes=29)) is None
    assert services.reallocate(campaign_id=campaign.pk, now=first.valid_from + dt.timedelta(minutes=31)) is not None
    assert Allocation.objects.filter(campaign=campaign).count() == 3


def test_the_sweep_reallocates_a_due_bandit_and_leaves_a_fixed_split_alone(push_gateway):
    campaign = _launched_bandit()
    fixed = CampaignFactory(status=CampaignStatus.RUNNING, schedule_kind="trigger", trigger_event="x")
    Allocation.objects.filter(campaign=campaign).update(valid_from=timezone.now() - dt.timedelta(hours=2))
    assert services.sweep()["reallocated"] == 1
    assert services.sweep()["reallocated"] == 0
    assert Allocation.objects.filter(campaign=campaign).count() == 2
    assert not Allocation.objects.filter(campaign=fixed).exists()


def test_a_seeded_bandit_draws_the_same_shares_from_the_same_data(push_gateway):
    campaign = _launched_bandit(bandit_seed=11)
    _arrive(campaign, make_profiles(300))
    _age_assignments(campaign)
    _orders(campaign, {"A": 0.10, "B": 0.12, "C": 0.11})
    later = timezone.now() + dt.timedelta(hours=2)
    drawn = []
    for _ in range(2):
        with transaction.atomic():
            drawn.append(services.reallocate(campaign_id=campaign.pk, now=later).shares)
            transaction.set_rollback(True)
    assert drawn[0] == drawn[1]
    # Close rates: the shares are not simply all on one arm (the draws matter).
    assert max(drawn[0].values()) < 0.85


def _spend_budget(rule: CouponRule, profile) -> None:
    coupon_services.issue_coupon(rule=rule, profile=profile, request_id="use-it-up", source="test")


def test_a_variant_whose_coupon_budget_runs_out_gets_no_newcomers_from_the_next_sweep_on(push_gateway):
    rule = CouponRuleFactory(value=Decimal("20.00"), budget=Decimal("20.00"))
    campaign = _launched_bandit()
    a = campaign.variants.get(name="A")
    a.coupon_rule_id = rule.pk
    a.save()
    profiles = make_profiles(400)
    launch = Allocation.objects.get(campaign=campaign)
    # Within the interval nothing is due while the budget lasts...
    assert services.reallocate(campaign_id=campaign.pk, now=launch.valid_from + dt.timedelta(minutes=5)) is None
    _spend_budget(rule, profiles[0])
    # ...but a spent budget takes the variant out at once; the others keep their proportions.
    allocation = services.reallocate(campaign_id=campaign.pk, now=launch.valid_from + dt.timedelta(minutes=6))
    assert allocation.reason == "budget"
    assert _shares_by_name(campaign, allocation) == pytest.approx({"holdout": 0.1, "A": 0.0, "B": 0.45, "C": 0.45})
    _arrive(campaign, profiles[1:])
    assert not Assignment.objects.filter(campaign=campaign, variant=a).exists()
    assert Assignment.objects.filter(campaign=campaign).count() == 399
    # Thompson steps after it keep the variant out while its budget stays spent.
    later = services.reallocate(campaign_id=campaign.pk, now=allocation.valid_from + dt.timedelta(minutes=61))
    assert later.reason == "thompson" and later.shares[str(a.pk)] == 0.0
    assert later.details["arms"][str(a.pk)]["out_of_budget"] is True
    CouponRule.objects.filter(pk=rule.pk).update(budget=Decimal("1000.00"))
    back = services.reallocate(campaign_id=campaign.pk, now=later.valid_from + dt.timedelta(minutes=61))
    assert back.shares[str(a.pk)] >= 0.05


def test_the_sample_ratio_check_holds_each_member_to_the_shares_in_force_at_assignment(push_gateway):
    campaign = _launched_bandit()
    profiles = make_profiles(1500)
    _arrive(campaign, profiles[:300])
    _age_assignments(campaign)
    _orders(campaign, {"A": 0.02, "B": 0.40, "C": 0.02})
    allocation = services.reallocate(campaign_id=campaign.pk, now=timezone.now() + dt.timedelta(minutes=61))
    _arrive(campaign, profiles[300:])
    results = campaign_results(campaign)
    counts = {g["name"]: g["assigned"] for g in results["groups"]}
    assert counts["B"] > 2 * counts["A"]  # the shares did move
    assert results["srm_p_value"] > 0.5 and not results["srm_blocked"]
    # Held to the latest shares alone, the same counts would block every roll-out as a mismatch.
    latest = _shares_by_name(campaign, allocation)
    names = ["holdout", "A", "B", "C"]
    naive = chisquare([counts[n] for n in names], [sum(counts.values()) * latest[n] for n in names]).pvalue
    assert naive < 0.001


def test_a_failed_reallocation_keeps_the_shares_and_the_sends_shows_why_and_is_tried_again(push_gateway):
    rule = CouponRuleFactory(state="paused")
    campaign = _launched_bandit(variants=[("A", 50), ("B", 50)])
    campaign.variants.update(coupon_rule_id=rule.pk)
    launch = Allocation.objects.get(campaign=campaign)
    Allocation.objects.filter(pk=launch.pk).update(valid_from=timezone.now() - dt.timedelta(hours=2))
    report = services.sweep()
    assert report["reallocated"] == 0 and report["failed"] == 0
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.RUNNING
    assert "coupon budget is spent" in campaign.allocation_error and campaign.allocation_error_at
    assert list(Allocation.objects.filter(campaign=campaign)) == [launch]
    # Arrivals go on under the shares in force.
    _arrive(campaign, make_profiles(20))
    assert Assignment.objects.filter(campaign=campaign, allocation=launch).count() == 20
    CouponRule.objects.filter(pk=rule.pk).update(state="active")
    assert services.sweep()["reallocated"] == 1
    campaign.refresh_from_db()
    assert campaign.allocation_error == "" and campaign.allocation_error_at is None


@pytest.mark.django_db(transaction=True)
def test_two_sweepers_reallocating_at_once_store_one_allocation():
    ChannelFactory(kind=ChannelKind.PUSH, url="http://127.0.0.1:9/never")
    campaign = _launched_bandit()
    _arrive(campaign, make_profiles(200))
    later = timezone.now() + dt.timedelta(hours=2)
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def sweeper() -> None:
        try:
            start.wait(5)
            outcomes.append(services.reallocate(campaign_id=campaign.pk, now=later))
        finally:
            connection.close()

    threads = [threading.Thread(target=sweeper) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(outcomes) == 2 and sum(o is not None for o in outcomes) == 1
    assert Allocation.objects.filter(campaign=campaign).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_reallocation_goes_ahead_while_triggered_sends_hold_the_campaign():
    ChannelFactory(kind=ChannelKind.PUSH, url="http://127.0.0.1:9/never")
    campaign = _launched_bandit()
    holding, release = threading.Event(), threading.Event()

    def triggered_send_in_progress() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT id FROM campaigns_campaign WHERE id = %s FOR SHARE", [campaign.pk])
                holding.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=triggered_send_in_progress)
    holder.start()
    try:
        assert holding.wait(10)
        assert services.reallocate(campaign_id=campaign.pk, now=timezone.now() + dt.timedelta(hours=2)) is not None
    finally:
        release.set()
        holder.join(10)


def test_a_recurring_bandit_cuts_its_first_run_by_the_launch_shares_and_later_newcomers_by_the_latest(push_gateway):
    campaign = _launched_bandit(schedule_kind="cron", cron="0 9 * * *", trigger_event="")
    launch = Allocation.objects.get(campaign=campaign)
    make_profiles(400)
    services.run_recurring_send(campaign_id=campaign.pk, run_at=timezone.now())
    first = Assignment.objects.filter(campaign=campaign)
    assert first.count() == 400 and first.filter(allocation=launch).count() == 400
    assert first.filter(role="holdout").count() == 40
    assert {first.filter(variant__name=n).count() for n in "ABC"} == {120}
    _age_assignments(campaign)
    _orders(campaign, {"A": 0.02, "B": 0.30, "C": 0.02})
    allocation = services.reallocate(campaign_id=campaign.pk, now=timezone.now() + dt.timedelta(hours=2))
    make_profiles(200, prefix="late")
    services.run_recurring_send(campaign_id=campaign.pk, run_at=timezone.now() + dt.timedelta(days=1))
    late = Assignment.objects.filter(campaign=campaign, user_id__startswith="late")
    assert late.count() == 200 and late.filter(allocation=allocation).count() == 200
    assert late.filter(variant__name="B").count() >= 150
    assert late.filter(role="holdout").count() == 20


# --- configuration, API and admin --------------------------------------------------------------


def _body(segment_id, **extra):
    return {
        "name": "Cart reminder",
        "segment": segment_id,
        "channel": "push",
        "holdout_percent": 10,
        "variants": [{"name": "A", "title": "Hi"}, {"name": "B", "title": "Hello"}],
        **extra,
    }


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"allocation": "thompson"}, "allocation", "recurring (cron) and triggered campaigns only"),
        ({"allocation": "thompson", "schedule": {"at": "2030-01-01T00:00:00Z"}}, "allocation", "only"),
        (
            {"allocation": "thompson", "schedule": {"cron": "0 9 * * *"}, "bandit_floor_percent": 50},
            "bandit_floor_percent",
            "exceed 100%",
        ),
        (
            {"allocation": "thompson", "schedule": {"trigger_event": "cart"}, "variants": [{"name": "A"}]},
            "allocation",
            "at least two",
        ),
        ({"allocation": "epsilon"}, "allocation", "not a valid choice"),
        ({"allocation": "thompson", "schedule": {"cron": "0 9 * * *"}, "margin_percent": 0}, "margin_percent", "0.01"),
        (
            {"allocation": "thompson", "schedule": {"cron": "0 9 * * *"}, "bandit_interval_minutes": 0},
            "bandit_interval_minutes",
            "greater than or equal to 1",
        ),
    ],
)
def test_create_refuses_a_bandit_that_cannot_work(api_client, change, field, reason):
    response = api_client.post("/api/v1/campaigns", _body(SegmentFactory().pk, **change), format="json")
    assert response.status_code == 400, response.json()
    assert reason in str(response.json()[field])
    assert not Campaign.objects.exists()


def test_create_accepts_a_triggered_bandit_and_the_detail_shows_its_shares_and_history(api_client, push_gateway):
    body = _body(
        SegmentFactory().pk,
        allocation="thompson",
        schedule={"trigger_event": "cart_abandoned"},
        bandit_floor_percent=10,
        bandit_interval_minutes=15,
        margin_percent=25,
        bandit_seed=3,
    )
    created = api_client.post("/api/v1/campaigns", body, format="json")
    assert created.status_code == 201, created.json()
    pk = created.json()["id"]
    assert created.json()["allocation"] == "thompson" and created.json()["bandit_floor_percent"] == 10.0
    assert api_client.post(f"/api/v1/campaigns/{pk}/launch").status_code == 202
    services.reallocate(campaign_id=pk, now=timezone.now() + dt.timedelta(minutes=16))
    detail = api_client.get(f"/api/v1/campaigns/{pk}").json()
    assert set(detail["shares"]) == {"holdout", "A", "B"}
    assert sum(detail["shares"].values()) == pytest.approx(1.0)
    assert [a["reason"] for a in detail["allocation_history"]] == ["thompson", "launch"]
    assert detail["allocation_history"][1]["shares"] == pytest.approx({"holdout": 0.1, "A": 0.45, "B": 0.45})
    assert detail["allocation_error"] == ""


def test_the_launch_refuses_a_one_off_bandit_with_the_field(api_client, push_gateway):
    campaign = CampaignFactory(allocation="thompson")
    response = api_client.post(f"/api/v1/campaigns/{campaign.pk}/launch")
    assert response.status_code == 422, response.content
    assert response.json()["reason"] == "INVALID_CONFIGURATION"
    assert "triggered campaigns only" in response.json()["fields"]["allocation"]


def test_the_openapi_schema_describes_the_bandit_fields(api_client):
    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    components = schema["components"]["schemas"]
    assert {"allocation", "bandit_floor_percent", "bandit_interval_minutes", "margin_percent"} <= set(
        components["CampaignInputRequest"]["properties"]
        if "CampaignInputRequest" in components
        else components["CampaignInput"]["properties"]
    )
    assert {"shares", "allocation_history", "allocation_error"} <= set(components["CampaignDetailOutput"]["properties"])


@pytest.fixture
def operator(client, make_staff):
    client.force_login(make_staff(superuser=True))
    return client


def test_the_admin_results_page_charts_the_shares_and_shows_a_failed_reallocation(operator, push_gateway):
    campaign = _launched_bandit()
    _arrive(campaign, make_profiles(50))
    services.reallocate(campaign_id=campaign.pk, now=timezone.now() + dt.timedelta(hours=2))
    Campaign.objects.filter(pk=campaign.pk).update(
        allocation_error="AllocationError: boom", allocation_error_at=timezone.now()
    )
    page = operator.get(reverse("admin:campaigns_campaign_results", args=[campaign.pk]))
    assert page.status_code == 200
    # Once, in the page's content: a second copy would give the chart's ids twice.
    assert page.content.count(b"Bandit shares of newcomers") == 1 and page.content.count(b'id="shares-data"') == 1
    assert b"Last reallocation failed" in page.content and b"AllocationError: boom" in page.content
    change = operator.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert b"Shares of newcomers in force" in change.content and b"holdout 10.0 %" in change.content


def test_deleting_a_bandit_campaign_takes_its_allocations_and_assignments_with_it(push_gateway):
    campaign = _launched_bandit()
    _arrive(campaign, make_profiles(30))
    services.reallocate(campaign_id=campaign.pk, now=timezone.now() + dt.timedelta(hours=2))
    campaign.delete()
    assert not Allocation.objects.exists() and not Assignment.objects.exists()
