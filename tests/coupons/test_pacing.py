"""Budget pacing: a rule spreads its budget over its days, and refuses claims beyond today's share."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coupons import services
from coupons.models import CouponRule
from tests.factories.coupons import CouponRuleFactory

pytestmark = pytest.mark.django_db
D = Decimal
DAYS = 30


def _plan(pacing: str, budget: Decimal) -> list[Decimal]:
    if pacing == "even":
        return [budget / DAYS] * DAYS
    parts = DAYS * (DAYS + 1) / 2
    return [budget * (DAYS - i) / D(parts) for i in range(DAYS)]


def _simulate_month(rule: CouponRule, start, seed: int) -> list[Decimal]:
    """Claims arriving at random times, each day 1.3 to 2 times what the day's plan could pay
    for, reserved in time order by the claim rule itself; what each day committed."""
    rng = random.Random(seed)
    per_coupon = rule.reserve_per_coupon()
    plan = _plan(rule.pacing, rule.budget)
    arrivals = []
    for day in range(DAYS):
        wanted = int(plan[day] / per_coupon * D(rng.uniform(1.1, 1.5))) + 1
        arrivals += [start + timedelta(days=day, seconds=rng.uniform(0, 86_399)) for _ in range(wanted)]
    arrivals.sort()
    assert len(arrivals) > 3_000
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE sim_claims (at timestamptz) ON COMMIT DROP")
        with cursor.copy("COPY sim_claims (at) FROM STDIN") as copy:
            for at in arrivals:
                copy.write_row([at])
        # One reserve per arrival, in time order (the sorted arrivals drive a nested loop); a
        # refused claim yields no row.
        cursor.execute(
            """
            WITH claims AS MATERIALIZED (SELECT at FROM sim_claims ORDER BY at)
            SELECT floor(extract(epoch FROM c.at - %(start)s) / 86400)::int, SUM(rv.reserved), COUNT(*)
              FROM claims c CROSS JOIN LATERAL coupons_reserve(%(rule)s, 1, c.at) rv
             GROUP BY 1 ORDER BY 1
            """,
            {"start": start, "rule": rule.pk},
        )
        rows = cursor.fetchall()
        cursor.execute(
            "SELECT floor(extract(epoch FROM at - %s) / 86400)::int, COUNT(*) FROM sim_claims GROUP BY 1 ORDER BY 1",
            [start],
        )
        arrived = dict(cursor.fetchall())
    assert [row[0] for row in rows] == list(range(DAYS))
    assert all(arrived[day] > granted for day, _, granted in rows)  # every day some claims were paced
    return [row[1] for row in rows]


@pytest.mark.parametrize("pacing", ["even", "front"])
def test_each_days_spend_in_a_simulated_month_ends_within_5_percent_of_plan(pacing):
    start = timezone.now().replace(microsecond=0) - timedelta(days=60)
    # Fine enough coupons for the smallest day's plan (the last front-loaded day gets 1/465 of
    # the budget) to be met within a few percent.
    budget = D("3000.00")
    rule = CouponRuleFactory(
        value=D("1.00") if pacing == "even" else D("0.20"),
        budget=budget,
        pacing=pacing,
        valid_from=start,
        valid_until=start + timedelta(days=DAYS),
        per_user_limit=1000,
    )
    spent = _simulate_month(rule, start, seed=7 if pacing == "even" else 11)
    plan = _plan(pacing, budget)
    errors = [abs(s - p) / p for s, p in zip(spent, plan, strict=True)]
    assert max(errors) <= D("0.05"), [f"{e:.3f}" for e in errors]
    rule.refresh_from_db()
    assert rule.committed <= rule.budget and sum(spent) == rule.committed


def test_a_claim_beyond_the_days_allowance_is_refused_as_paced_and_the_rest_rolls_over(make_api_client):
    shop = make_api_client("coupons:redeem")
    now = timezone.now()
    rule = CouponRuleFactory(
        value=D("10.00"),
        budget=D("100.00"),
        pacing="even",
        valid_from=now - timedelta(minutes=1),
        valid_until=now - timedelta(minutes=1) + timedelta(days=10),
    )
    first = shop.post(f"/api/v1/coupon-rules/{rule.pk}/claim", {"user_id": "p-1"}, format="json")
    second = shop.post(f"/api/v1/coupon-rules/{rule.pk}/claim", {"user_id": "p-2"}, format="json")
    assert first.status_code == 201, first.json()
    assert second.status_code == 409 and second.json()["reason"] == "PACED", second.json()
    # By the end of day 1 the allowance is two coupons' worth, one of them taken on day 0: one more.
    tomorrow = now + timedelta(days=1)
    granted = 0
    with connection.cursor() as cursor:
        for _ in range(3):
            cursor.execute("SELECT COUNT(*) FROM coupons_reserve(%s, 1, %s)", [rule.pk, tomorrow])
            granted += cursor.fetchone()[0]
    assert granted == 1
    assert services.rules_able_to_issue(rule_ids=[rule.pk], now=now) == set()


def test_pacing_without_dates_or_budget_is_a_400_naming_pacing(make_api_client):
    ops = make_api_client("manage")
    response = ops.post(
        "/api/v1/coupon-rules",
        {"name": "Paced", "kind": "fixed", "value": "5.00", "pacing": "even", "budget": "100.00"},
        format="json",
    )
    assert response.status_code == 400 and "pacing" in response.json(), response.json()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pacing=st.sampled_from(["even", "front"]),
    hours=st.integers(1, 90 * 24),
    probes=st.lists(st.floats(0, 1.2, allow_nan=False), min_size=2, max_size=8),
)
def test_the_paced_share_grows_day_by_day_and_reaches_the_whole_budget_on_the_last_day(pacing, hours, probes):
    start = timezone.now().replace(microsecond=0)
    end = start + timedelta(hours=hours)
    last_day = end - timedelta(seconds=1)
    moments = sorted([*(start + timedelta(hours=hours * p) for p in probes), last_day])
    with connection.cursor() as cursor:
        shares = []
        for moment in moments:
            cursor.execute("SELECT coupons_paced_share(%s, %s, %s, %s)", [pacing, start, end, moment])
            shares.append(cursor.fetchone()[0])
    assert all(0 < s <= 1 for s in shares)
    assert shares == sorted(shares)
    assert shares[moments.index(last_day)] == 1


def test_a_paced_rule_whose_whole_budget_is_taken_answers_budget_exhausted_not_paced(make_api_client):
    shop = make_api_client("coupons:redeem")
    now = timezone.now()
    rule = CouponRuleFactory(
        value=D("10.00"),
        budget=D("100.00"),
        pacing="even",
        valid_from=now - timedelta(days=9, hours=23),
        valid_until=now + timedelta(hours=1),
    )
    # The last day: the allowance is the whole budget, and all of it is taken already.
    CouponRule.objects.filter(pk=rule.pk).update(committed=D("60.00"), spent=D("40.00"))
    refused = shop.post(f"/api/v1/coupon-rules/{rule.pk}/claim", {"user_id": "p-1"}, format="json")
    assert refused.status_code == 409 and refused.json()["reason"] == "BUDGET_EXHAUSTED", refused.json()
    # Mid-way through, with the budget gone, the answer is the same (not "come back tomorrow").
    CouponRule.objects.filter(pk=rule.pk).update(valid_until=now + timedelta(days=5))
    refused = shop.post(f"/api/v1/coupon-rules/{rule.pk}/claim", {"user_id": "p-2"}, format="json")
    assert refused.status_code == 409 and refused.json()["reason"] == "BUDGET_EXHAUSTED", refused.json()
