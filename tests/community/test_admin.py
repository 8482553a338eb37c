"""The admin pages: funnel with chart and cohorts, group health, competitor apps, assignment of
unassigned accounts and groups, the ranking with breakdown, sources, history and CSV, weights
and runs."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse
from django.utils import translation

from access.models import AuditEntry
from community.models import CommunityGroup, ContributionScore, OperatorAccount, ScoreDimension, ScoreRun
from community.services import compute_contribution_scores
from config import formatting
from tests.factories.community import CommunityGroupFactory, OperatorAccountFactory, OperatorFactory, event, send

pytestmark = pytest.mark.django_db


def test_funnel_page_shows_steps_chart_data_and_weekly_cohorts(admin_client):
    OperatorAccountFactory(external_id="acct-a")
    now = datetime.now(tz=UTC)
    send(
        event("order_paid", now - timedelta(days=5), user_id="f1", order_id="1", amount="9.90"),
        event("page_view", now - timedelta(days=5) + timedelta(hours=1), user_id="f1")
        | {"context": {"url": "https://s.example/community"}},
        event("community_contact_added", now - timedelta(days=4), user_id="f1", account_id="acct-a"),
    )
    response = admin_client.get(reverse("admin:community_funnel"))
    assert response.status_code == 200
    assert [s["count"] for s in response.context["funnel"]["overall"]] == [1, 1, 1, 0, 0]
    assert response.context["charts"]["funnel"]["counts"] == [1, 1, 1, 0, 0]
    assert sum(c["contacts"] for c in response.context["cohorts"]) == 1
    assert b'id="funnel-chart"' in response.content and b'id="cohort-chart"' in response.content


def test_funnel_page_refuses_a_reversed_range_with_the_reason(admin_client):
    response = admin_client.get(reverse("admin:community_funnel"), {"start": "2026-05-01", "end": "2026-04-01"})
    assert response.status_code == 200 and b"The end must be after the start." in response.content


def test_health_and_apps_pages_render_their_tables(admin_client):
    group = CommunityGroupFactory(external_id="g-health", name="Health group")
    send(event("community_joined", datetime.now(tz=UTC) - timedelta(days=1), user_id="h1", group_id="g-health"))
    health = admin_client.get(reverse("admin:community_health"), {"group": group.pk})
    assert health.status_code == 200 and [r["members"] for r in health.context["rows"]] == [1]
    apps = admin_client.get(reverse("admin:community_apps"), {"days": "14"})
    assert apps.status_code == 200 and apps.context["data"]["window_days"] == 14


def test_unassigned_filter_and_assignment_from_the_change_form_are_audited(admin_client):
    send(event("community_joined", datetime.now(tz=UTC) - timedelta(hours=1), user_id="u1", group_id="orphan"))
    url = reverse("admin:community_communitygroup_changelist")
    listed = admin_client.get(url, {"assigned": "no"})
    assert [g.external_id for g in listed.context["cl"].result_list] == ["orphan"]
    group = CommunityGroup.objects.get(external_id="orphan")
    op = OperatorFactory(username="carol")
    response = admin_client.post(
        reverse("admin:community_communitygroup_change", args=[group.pk]),
        {"external_id": "orphan", "name": "Carol's fans", "operator": op.pk},
    )
    assert response.status_code == 302
    group.refresh_from_db()
    assert group.operator == op and group.name == "Carol's fans"
    assert AuditEntry.objects.filter(action="community.group_assigned", object_id=str(group.pk)).exists()


def _scored() -> tuple[ContributionScore, ContributionScore]:
    alice = OperatorFactory(username="alice")
    OperatorAccountFactory(external_id="acct-a", operator=alice)
    OperatorAccountFactory(external_id="acct-b")
    send(
        event("community_contact_added", datetime(2026, 4, 3, tzinfo=UTC), user_id="c1", account_id="acct-a"),
        event("community_contact_added", datetime(2026, 5, 3, tzinfo=UTC), user_id="c2", account_id="acct-a"),
        event("order_paid", datetime(2026, 5, 4, tzinfo=UTC), user_id="c2", order_id="o-1", amount="42.00"),
        now=datetime(2026, 6, 2, tzinfo=UTC),
    )
    compute_contribution_scores(month=date(2026, 4, 1), now=datetime(2026, 6, 2, tzinfo=UTC))
    compute_contribution_scores(month=date(2026, 5, 1), now=datetime(2026, 6, 2, tzinfo=UTC))
    return (
        ContributionScore.objects.get(month=date(2026, 4, 1), operator=alice),
        ContributionScore.objects.get(month=date(2026, 5, 1), operator=alice),
    )


def test_ranking_lists_scores_with_a_column_per_dimension(admin_client):
    _scored()
    response = admin_client.get(reverse("admin:community_contributionscore_changelist"), {"month__exact": "2026-05-01"})
    rows = list(response.context["cl"].result_list)
    assert [(r.rank, r.subject_name) for r in rows] == [
        (1, "alice"),
        (2, OperatorAccount.objects.get(external_id="acct-b").operator.username),
    ]
    assert b"Transaction amount of contacts" in response.content and b"42.00 (p75)" in response.content


def test_score_page_shows_breakdown_sources_and_monthly_history(admin_client):
    april, may = _scored()
    response = admin_client.get(reverse("admin:community_contributionscore_change", args=[may.pk]))
    assert response.status_code == 200
    dims = {d["key"]: d for d in response.context["dimensions"]}
    assert dims["contact_transactions"]["raw"] == "42.00"
    assert dims["contact_transactions"]["sources"] == [{"orders": 1, "amount": "42.00"}]
    assert [h.pk for h in response.context["history"]] == [april.pk, may.pk]
    assert response.context["charts"]["labels"] == ["Apr 2026", "May 2026"]
    assert response.context["title"].endswith(": May 2026")


def test_ranking_exports_the_filtered_month_as_csv(admin_client):
    _scored()
    response = admin_client.get(reverse("admin:community_contributionscore_export"), {"month__exact": "2026-04-01"})
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert {r["Month"] for r in rows} == {"2026-04"} and len(rows) == 2
    # People read this file: each header says its unit; the values stay plain for spreadsheets.
    assert list(rows[0])[:6] == [
        "Month", "Operator or team", "Name", "Members (people)", "Rank", "Score (points of 100)",
    ]  # fmt: skip
    assert {r["Operator or team"] for r in rows} == {"Operator"}
    assert "Transaction amount of contacts: raw value (¥)" in rows[0]
    assert "New members attracted: raw value (people)" in rows[0]
    assert "Community quality: percentile (percentile among peers, 0-100)" in rows[0]
    assert "Campaign results against holdouts: weight (relative)" in rows[0]
    assert len(rows[0]) == 6 + 3 * 4
    with translation.override("zh-hans"):
        zh = admin_client.get(
            reverse("admin:community_contributionscore_export"),
            {"month__exact": "2026-04-01"},
            HTTP_ACCEPT_LANGUAGE="zh-hans",
        )
    header = next(csv.reader(io.StringIO(zh.content.decode())))
    assert header[0] == "月" and "吸引的新成员：原始值 (人数)" in header and not any("raw value" in h for h in header)
    selected = admin_client.post(
        reverse("admin:community_contributionscore_changelist"),
        {"action": "export_csv", ACTION_CHECKBOX_NAME: [ContributionScore.objects.order_by("pk").first().pk]},
    )
    assert len(list(csv.reader(io.StringIO(selected.content.decode())))) == 2  # header and the one row


def test_weights_are_edited_in_the_list_and_audited(admin_client):
    url = reverse("admin:community_scoredimension_changelist")
    admin_client.get(url)  # creates the dimensions
    dims = list(ScoreDimension.objects.order_by("key"))
    data = {"form-TOTAL_FORMS": len(dims), "form-INITIAL_FORMS": len(dims), "_save": "Save"}
    for i, d in enumerate(dims):
        data[f"form-{i}-id"] = d.pk
        data[f"form-{i}-weight"] = "3.50" if d.key == "new_members" else "1.00"
    assert admin_client.post(url, data).status_code == 302
    assert ScoreDimension.objects.get(key="new_members").weight == 3.5
    refused = {**data, "form-0-weight": "-1"}
    assert b"Ensure this value is greater than or equal to 0" in admin_client.post(url, refused).content
    assert AuditEntry.objects.filter(action="community.score_dimension_changed").exists()


def test_runs_page_queues_a_month_shows_a_failure_reason_and_retries_it(admin_client):
    url = reverse("admin:community_scorerun_changelist")
    admin_client.post(reverse("admin:community_scorerun_run"), {"month": "2026-05"})
    assert ScoreRun.objects.get().status == ScoreRun.Status.QUEUED
    admin_client.post(reverse("admin:community_scorerun_run"), {"month": "May"})
    assert ScoreRun.objects.count() == 1
    failed = ScoreRun.objects.create(month=date(2026, 3, 1), status=ScoreRun.Status.FAILED, error="NoWeights: all 0")
    assert b"NoWeights: all 0" in admin_client.get(url).content
    admin_client.post(url, {"action": "retry", ACTION_CHECKBOX_NAME: [failed.pk]})
    failed.refresh_from_db()
    assert failed.status == ScoreRun.Status.QUEUED and failed.error == ""


def test_score_page_links_each_source_to_its_campaign_and_group(admin_client):
    from tests.factories.campaigns import CampaignFactory

    campaign = CampaignFactory(name="Spring push")
    group = CommunityGroupFactory(external_id="g-src")
    op = OperatorFactory(username="dora")
    run = ScoreRun.objects.create(month=date(2026, 5, 1), status=ScoreRun.Status.DONE)
    score = ContributionScore.objects.create(
        run=run,
        month=run.month,
        subject="operator",
        operator=op,
        score=61,
        rank=1,
        breakdown={"campaign_incremental": {"raw": "20.00", "percentile": 75.0, "weight": "1.00"}},
        sources={
            "campaign_incremental": [
                {
                    "campaign": campaign.pk,
                    "name": "Spring push",
                    "incremental_revenue": "20.00",
                    "incremental_conversions": 1.5,
                    "holdout_assigned": 4,
                }
            ],
            "community_quality": [
                {"group": group.pk, "external_id": "g-src", "members": 3, "active": 1, "healthy_lifecycle": 2}
            ],
        },
    )
    response = admin_client.get(reverse("admin:community_contributionscore_change", args=[score.pk]))
    page = response.content.decode()
    assert reverse("admin:campaigns_campaign_change", args=[campaign.pk]) in page and "Spring push" in page
    assert reverse("admin:community_communitygroup_change", args=[group.pk]) in page


def test_funnel_and_score_pages_write_counts_rates_and_days_through_the_helper(admin_client):
    OperatorAccountFactory(external_id="acct-f")
    now = datetime.now(tz=UTC)
    send(
        event("order_paid", now - timedelta(days=5), user_id="f1", order_id="1", amount="9.90"),
        event("community_contact_added", now - timedelta(days=4), user_id="f1", account_id="acct-f"),
    )
    funnel = admin_client.get(reverse("admin:community_funnel"))
    html = funnel.content.decode()
    (cohort,) = funnel.context["cohorts"]
    week = formatting.local_date(cohort["week"])
    assert funnel.context["charts"]["cohorts"]["labels"] == [week]
    assert f"<tr><td>{week}</td>" in html and "(0.0 %)" in html
    assert "100.0 %" in html and "%%" not in html
    _april, may = _scored()
    page = admin_client.get(reverse("admin:community_contributionscore_change", args=[may.pk])).content.decode()
    assert f'<strong id="score">{formatting.number(may.score, 1)}</strong>' in page
