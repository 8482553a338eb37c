"""Results: attribution inside vs outside the window, statistics checked against statsmodels
and scipy on the counts, and the published numbers of two public A/B test data sets."""

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from django.utils import timezone
from scipy.stats import chisquare
from statsmodels.stats.proportion import proportion_confint, proportions_ztest

from campaigns import services
from campaigns.models import Assignment, CampaignStatus, Delivery
from campaigns.selectors import campaign_results
from tests.factories.campaigns import CampaignFactory, add_events, make_profiles

DATA = Path("/work/shared/data")


def _sent_campaign(n: int = 100, **kwargs):
    make_profiles(n)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, **kwargs)
    services.start_send(campaign_id=campaign.pk)
    sent_at = timezone.now() - dt.timedelta(days=10)
    Delivery.objects.filter(campaign=campaign).update(status="sent", sent_at=sent_at)
    Assignment.objects.filter(campaign=campaign).update(assigned_at=sent_at)
    return campaign, sent_at


@pytest.mark.django_db
def test_conversions_count_only_inside_the_attribution_window():
    campaign, sent_at = _sent_campaign(holdout_percent=Decimal(10), attribution_hours=72)
    a_users = list(campaign.assignments.filter(variant__name="A").values_list("user_id", flat=True))
    holdout = list(campaign.assignments.filter(role="holdout").values_list("user_id", flat=True))
    add_events([(u, "order_paid", sent_at + dt.timedelta(hours=5)) for u in a_users[:9]], {"amount": "12.50"})
    add_events([(u, "order_paid", sent_at + dt.timedelta(hours=80)) for u in a_users[9:20]], {"amount": "99.00"})
    add_events([(u, "order_paid", sent_at - dt.timedelta(hours=1)) for u in a_users[20:25]], {"amount": "5.00"})
    add_events([(u, "order_paid", sent_at + dt.timedelta(hours=71)) for u in holdout[:2]], {"amount": "1.00"})
    results = campaign_results(campaign)
    groups = {g["name"]: g for g in results["groups"]}
    assert groups["A"]["converted"] == 9
    assert groups["A"]["revenue"] == "112.50"
    assert groups["B"]["converted"] == 0
    assert groups["holdout"]["converted"] == 2
    assert groups["holdout"]["assigned"] == 10 and groups["A"]["assigned"] == 45


@pytest.mark.django_db
def test_result_statistics_agree_with_statsmodels_and_scipy():
    campaign, sent_at = _sent_campaign(n=400, holdout_percent=Decimal(25))
    b_users = list(campaign.assignments.filter(variant__name="B").values_list("user_id", flat=True))
    holdout = list(campaign.assignments.filter(role="holdout").values_list("user_id", flat=True))
    add_events([(u, "order_paid", sent_at + dt.timedelta(hours=1)) for u in b_users[:40]])
    add_events([(u, "order_paid", sent_at + dt.timedelta(hours=1)) for u in holdout[:10]])
    results = campaign_results(campaign)
    groups = {g["name"]: g for g in results["groups"]}
    b, h = groups["B"], groups["holdout"]
    assert (b["assigned"], b["converted"], h["assigned"], h["converted"]) == (150, 40, 100, 10)
    _z, p = proportions_ztest([40, 10], [150, 100])
    assert b["p_value"] == pytest.approx(p, abs=1e-12)
    low, high = proportion_confint(40, 150, method="wilson")
    assert (b["ci_low"], b["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert b["uplift_vs_holdout"] == pytest.approx(40 / 150 - 10 / 100)
    assert b["relative_uplift"] == pytest.approx((40 / 150 - 0.1) / 0.1)
    assert results["srm_p_value"] == pytest.approx(chisquare([100, 150, 150], [100, 150, 150]).pvalue)
    assert results["winner"] == "B"
    campaign.min_sample = 1000
    assert campaign_results(campaign)["winner"] is None


def _ab_data_counts() -> tuple[int, int, int, int]:
    df = pd.read_csv(DATA / "ab_test" / "ab_data.csv")
    aligned = df[(df["group"] == "treatment") == (df["landing_page"] == "new_page")]
    aligned = aligned.drop_duplicates(subset="user_id")
    control = aligned[aligned["group"] == "control"]["converted"]
    treatment = aligned[aligned["group"] == "treatment"]["converted"]
    return int(control.sum()), len(control), int(treatment.sum()), len(treatment)


@pytest.mark.django_db
def test_analyze_reproduces_the_published_ab_data_answer(api_client):
    c_conv, c_n, t_conv, t_n = _ab_data_counts()
    assert (c_conv, c_n, t_conv, t_n) == (17489, 145274, 17264, 145310)
    response = api_client.post(
        "/api/v1/experiments/analyze",
        {
            "control": "control",
            "groups": [
                {"name": "control", "assigned": c_n, "converted": c_conv},
                {"name": "treatment", "assigned": t_n, "converted": t_conv},
            ],
        },
        format="json",
    )
    assert response.status_code == 200
    treatment = response.json()["groups"][1]
    assert round(treatment["z"], 4) == -1.3109
    assert round(treatment["p_value"], 5) == 0.18988
    assert round(treatment["uplift_vs_control"], 6) == -0.001578
    assert response.json()["winner"] is None


@pytest.mark.django_db
def test_analyze_reproduces_the_published_cookie_cats_answer(api_client):
    df = pd.read_csv(DATA / "cookie_cats" / "cookie_cats.csv")
    groups = []
    for version in ("gate_30", "gate_40"):
        rows = df[df["version"] == version]
        groups.append({"name": version, "assigned": len(rows), "converted": int(rows["retention_7"].sum())})
    assert [g["assigned"] for g in groups] == [44700, 45489]
    body = api_client.post(
        "/api/v1/experiments/analyze", {"control": "gate_30", "groups": groups}, format="json"
    ).json()
    assert round(body["srm_p_value"], 4) == 0.0086
    gate_40 = body["groups"][1]
    assert round(gate_40["p_value"], 5) == 0.00155
    assert round(body["groups"][0]["conversion_rate"], 6) == 0.190201
    # gate_40 is significantly *worse*: no winner.
    assert body["winner"] is None


@pytest.mark.django_db
def test_analyze_refuses_inconsistent_groups_naming_the_field(api_client):
    response = api_client.post(
        "/api/v1/experiments/analyze",
        {
            "control": "X",
            "groups": [{"name": "A", "assigned": 5, "converted": 9}, {"name": "B", "assigned": 5, "converted": 1}],
        },
        format="json",
    )
    assert response.status_code == 400
    assert "converted" in str(response.json())
