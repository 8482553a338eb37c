"""The funnel, weekly cohorts, group health and competitor-app retention on built worlds whose
answers are counted by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from statsmodels.stats.proportion import proportions_ztest

from community.selectors import community_funnel, competitor_apps, contact_cohorts, group_health, matched_difference
from crm.models import CustomerValue, LifecycleStage
from tests.factories.community import CommunityGroupFactory, OperatorAccountFactory, OperatorFactory, event, send
from tests.factories.crm import CustomerFactory, ValueTierFactory, paid_order

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)  # a Monday
AS_OF = datetime(2026, 4, 30, tzinfo=UTC)


def _journey(user: str, *, steps: int, account: str = "acct-a", group: str = "grp-a", channel: str = "") -> None:
    """A customer going `steps` steps down the funnel (1 = paid only ... 5 = bought again)."""
    t = T0
    rows = [event("order_paid", t, user_id=user, order_id=f"{user}-1", amount="50.00")]
    if channel:
        rows[0]["context"] = {"utm_source": channel}
    if steps >= 2:
        rows.append(
            event("page_view", t + timedelta(hours=1), user_id=user)
            | {"context": {"url": "https://shop.example/community?x=1"}}
        )
    if steps >= 3:
        rows.append(event("community_contact_added", t + timedelta(hours=2), user_id=user, account_id=account))
        rows.append(event("community_joined", t + timedelta(hours=3), user_id=user, group_id=group))
    if steps >= 4:
        rows.append(event("community_message", t + timedelta(days=2), user_id=user, group_id=group))
    if steps >= 5:
        rows.append(event("order_paid", t + timedelta(days=10), user_id=user, order_id=f"{user}-2", amount="80.00"))
    result = send(*rows, now=AS_OF)
    assert not result.rejected


def test_funnel_counts_each_step_in_order_with_rates_per_channel_operator_and_group():
    alice = OperatorFactory(username="alice")
    OperatorAccountFactory(external_id="acct-a", operator=alice)
    CommunityGroupFactory(external_id="grp-a", operator=alice, name="Alice's group")
    for i, steps in enumerate([1, 1, 2, 3, 3, 4, 5, 5]):
        _journey(f"c{i}", steps=steps, channel="douyin" if i % 2 else "")
    # A message later than 7 days after the contact does not make the person active.
    _journey("late", steps=3)
    send(event("community_message", T0 + timedelta(days=9), user_id="late", group_id="grp-a"), now=AS_OF)

    funnel = community_funnel(start=T0 - timedelta(days=1), end=T0 + timedelta(days=1), as_of=AS_OF)
    counts = [s["count"] for s in funnel["overall"]]
    assert counts == [9, 7, 6, 3, 2]
    assert funnel["overall"][1]["rate_from_previous"] == pytest.approx(7 / 9)
    assert funnel["overall"][4]["rate_from_start"] == pytest.approx(2 / 9)
    channels = {c["key"]: [s["count"] for s in c["steps"]] for c in funnel["by_channel"]}
    assert channels == {"douyin": [4, 3, 3, 2, 1], "(none)": [5, 4, 3, 1, 1]}
    [operator] = funnel["by_operator"]
    assert operator["label"] == "alice" and [s["count"] for s in operator["steps"]] == [6, 3, 2]
    [group] = funnel["by_group"]
    assert group["label"] == "Alice's group" and [s["count"] for s in group["steps"]] == [3, 2]


def test_cohorts_group_contacts_by_week_of_first_contact():
    OperatorAccountFactory(external_id="acct-a")
    CommunityGroupFactory(external_id="grp-a")
    for i, steps in enumerate([3, 4, 5]):
        _journey(f"w1-{i}", steps=steps)
    later = T0 + timedelta(days=7)
    send(event("community_contact_added", later, user_id="w2-0", account_id="acct-a"), now=AS_OF)
    rows = contact_cohorts(start=T0 - timedelta(days=7), end=T0 + timedelta(days=21), as_of=AS_OF)
    assert [(r["week"], r["contacts"], r["active"], r["bought_again"]) for r in rows] == [
        (T0.date(), 3, 2, 1),
        (later.date(), 1, 0, 0),
    ]


def test_matched_difference_weights_non_members_to_the_members_mix():
    # Stratum a: members 8/10, controls 50/100; stratum b: members 1/10, controls 10/100.
    members = {"a": (10, 8), "b": (10, 1), "c": (5, 5)}  # c has no control: left out
    controls = {"a": (100, 50), "b": (100, 10), "d": (50, 1)}
    result = matched_difference(members, controls)
    assert result.members == 25 and result.matched_members == 20
    assert result.member_rate == pytest.approx(0.5 * 0.8 + 0.5 * 0.1)  # the matched members
    assert result.matched_rate == pytest.approx(0.5 * 0.5 + 0.5 * 0.1)
    assert result.difference == pytest.approx(0.5 * 0.3 + 0.5 * 0.0)
    var = 0.25 * (0.8 * 0.2 / 10 + 0.25 / 100) + 0.25 * (0.1 * 0.9 / 10 + 0.09 / 100)
    assert result.ci_high - result.difference == pytest.approx(1.959964 * var**0.5, rel=1e-5)


def test_group_health_counts_members_activity_lifecycle_and_matched_repurchase():
    as_of = datetime(2026, 6, 1, tzinfo=UTC)
    window_start = as_of - timedelta(days=30)
    gold = ValueTierFactory(slug="gold")
    group = CommunityGroupFactory(external_id="grp-h")
    members, others = [], []
    for i in range(6):
        p = CustomerFactory(user_id=f"m{i}")
        paid_order(p, "10.00", window_start - timedelta(days=10))
        CustomerValue.objects.create(
            profile=p, tier=gold, lifecycle=LifecycleStage.ACTIVE if i < 4 else LifecycleStage.SILENT
        )
        members.append(p)
    for i in range(10):
        p = CustomerFactory(user_id=f"n{i}")
        paid_order(p, "10.00", window_start - timedelta(days=12))
        CustomerValue.objects.create(profile=p, tier=gold, lifecycle=LifecycleStage.ACTIVE)
        others.append(p)
    for p in members[:4]:  # 4 of 6 members buy again, 2 of 10 non-members
        paid_order(p, "20.00", window_start + timedelta(days=5))
    for p in others[:2]:
        paid_order(p, "20.00", window_start + timedelta(days=5))
    joined = window_start - timedelta(days=5)
    send(*[event("community_joined", joined, user_id=p.user_id, group_id="grp-h") for p in members], now=as_of)
    send(
        event("community_message", as_of - timedelta(days=2), user_id="m0", group_id="grp-h"),
        event("community_message", as_of - timedelta(days=1), user_id="m0", group_id="grp-h"),
        event("community_message", as_of - timedelta(days=20), user_id="m1", group_id="grp-h"),
        event("community_left", as_of - timedelta(days=3), user_id="m5", group_id="grp-h"),
        now=as_of,
    )
    [row] = group_health(as_of=as_of, days=30, group_ids=[group.pk])
    assert (row["members"], row["joins"], row["leaves"], row["messages"]) == (5, 0, 1, 3)
    assert row["active_members"] == 1 and row["active_share"] == pytest.approx(1 / 5)
    assert row["lifecycle"] == {"active": 4, "silent": 1}
    rep = row["repurchase"]
    # m5 left: members are the 5 still in, of whom 4 bought; all gold and 10-19 days since.
    assert rep["members"] == 5 and rep["matched_members"] == 5
    assert rep["member_rate"] == pytest.approx(4 / 5)
    # m5 left the group: a non-member now, who did not buy (2 of 11 non-members bought).
    assert rep["matched_non_member_rate"] == pytest.approx(2 / 11)
    assert rep["difference"] == pytest.approx(0.8 - 2 / 11)
    assert rep["ci_low"] < rep["difference"] < rep["ci_high"] and rep["ci_low"] > 0


def test_competitor_apps_compare_retention_with_and_without_each_app_sorted_by_overlap():
    as_of = datetime(2026, 6, 1, tzinfo=UTC)
    start = as_of - timedelta(days=30)
    # 40 people active before the window; 20 have "Meituan", 10 "Ele.me"; people with Meituan stay.
    for i in range(40):
        apps = (["Meituan"] if i < 20 else []) + ([" ele.me"] if i % 4 == 0 else [])
        p = CustomerFactory(user_id=f"a{i}", traits={"installed_apps": apps})
        paid_order(p, "5.00", start - timedelta(days=3))
        stays = i < 16 if i < 20 else i < 26
        if stays:
            paid_order(p, "5.00", start + timedelta(days=3))
    # Someone whose list arrives as an event, and someone without a list (left out).
    p = CustomerFactory(user_id="ev")
    paid_order(p, "5.00", start - timedelta(days=2))
    send(event("installed_apps", start - timedelta(days=1), user_id="ev", apps=["Meituan"]), now=as_of)
    q = CustomerFactory(user_id="none")
    paid_order(q, "5.00", start - timedelta(days=2))

    result = competitor_apps(as_of=as_of, days=30)
    assert result["people"] == 41
    assert [a["app"] for a in result["apps"]] == ["meituan", "ele.me"]
    meituan = result["apps"][0]
    assert meituan["users"] == 21 and meituan["overlap_share"] == pytest.approx(21 / 41)
    assert meituan["retention_with"] == pytest.approx(16 / 21)
    assert meituan["retention_without"] == pytest.approx(6 / 20)
    _, p_value = proportions_ztest([16, 6], [21, 20])
    assert meituan["p_value"] == pytest.approx(p_value) and meituan["significant"]
    assert meituan["ci_low"] < meituan["difference"] < meituan["ci_high"]
