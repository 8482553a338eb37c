"""Properties over the configuration space: score weights and team sizes (normalisation), and
journeys through the funnel (monotone steps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from community.models import Dimension
from community.scoring import per_member_mean, score_subjects
from community.selectors import community_funnel
from tests.factories.community import CommunityGroupFactory, OperatorAccountFactory, event, send

DIMS = list(Dimension.values)
amounts = st.decimals(min_value=Decimal("-1000"), max_value=Decimal("100000"), places=2, allow_nan=False)
member = st.fixed_dictionaries({d: amounts for d in DIMS})
weights = st.fixed_dictionaries({d: st.decimals(min_value=0, max_value=100, places=2) for d in DIMS}).filter(
    lambda w: sum(w.values()) > 0
)


@given(raw=st.dictionaries(st.integers(1, 10_000), member, min_size=1, max_size=12), w=weights)
def test_scores_stay_between_0_and_100_and_ranks_follow_scores(raw, w):
    scored = score_subjects(raw, w)
    assert {s.key for s in scored} == set(raw)
    assert all(Decimal(0) <= s.score <= Decimal(100) for s in scored)
    for a, b in pairwise(scored):
        assert a.score >= b.score and (a.rank == b.rank) == (a.score == b.score)


@given(
    raw=st.dictionaries(st.integers(1, 10_000), member, min_size=1, max_size=12),
    w=weights,
    factor=st.decimals(min_value=Decimal("0.01"), max_value=1000, places=2),
)
def test_multiplying_every_weight_by_one_factor_changes_no_score(raw, w, factor):
    before = {s.key: s.score for s in score_subjects(raw, w)}
    after = {s.key: s.score for s in score_subjects(raw, {d: v * factor for d, v in w.items()})}
    assert before == after


@given(
    teams=st.lists(st.lists(member, min_size=1, max_size=4), min_size=2, max_size=6),
    copies=st.integers(1, 10),
    w=weights,
)
def test_a_team_scores_the_same_with_its_members_repeated_to_any_size(teams, copies, w):
    """Team 0 of n members and the same team of n x copies members are the same team, fairly."""
    raw = {i: per_member_mean(members, DIMS) for i, members in enumerate(teams)}
    grown = dict(raw)
    grown[0] = per_member_mean(teams[0] * copies, DIMS)
    assert {s.key: s.score for s in score_subjects(raw, w)} == {s.key: s.score for s in score_subjects(grown, w)}


@given(
    raw=st.dictionaries(st.integers(1, 10_000), member, min_size=2, max_size=8),
    w=weights,
    dim=st.sampled_from(DIMS),
    gain=st.decimals(min_value=Decimal("0.01"), max_value=10_000, places=2),
)
def test_doing_better_on_a_weighted_dimension_never_lowers_the_score(raw, w, dim, gain):
    key = next(iter(raw))
    better = {k: dict(v) for k, v in raw.items()}
    better[key][dim] += gain
    before = next(s.score for s in score_subjects(raw, w) if s.key == key)
    after = next(s.score for s in score_subjects(better, w) if s.key == key)
    assert after >= before


class _Rollback(Exception):
    pass


T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
journey = st.fixed_dictionaries(
    {
        "page": st.booleans(),
        "page_before_paid": st.booleans(),
        "contact": st.booleans(),
        "message_hours": st.none() | st.integers(0, 24 * 10),
        "again_hours": st.none() | st.integers(-48, 24 * 30),
        "channel": st.sampled_from(["", "douyin", "sms"]),
    }
)


@pytest.mark.django_db(transaction=False)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(journeys=st.lists(journey, min_size=1, max_size=8))
def test_funnel_steps_never_grow_and_slices_add_up(journeys):
    try:
        with transaction.atomic():
            OperatorAccountFactory(external_id="acct-p")
            CommunityGroupFactory(external_id="grp-p")
            rows = []
            for i, j in enumerate(journeys):
                user = f"p{i}"
                paid = event("order_paid", T0, user_id=user, order_id=f"{user}-1", amount="10.00")
                if j["channel"]:
                    paid["context"] = {"utm_source": j["channel"]}
                rows.append(paid)
                if j["page"]:
                    at = T0 + timedelta(hours=-1 if j["page_before_paid"] else 1)
                    rows.append(
                        event("page_view", at, user_id=user) | {"context": {"url": "https://s.example/community"}}
                    )
                if j["contact"]:
                    rows.append(
                        event("community_contact_added", T0 + timedelta(hours=2), user_id=user, account_id="acct-p")
                    )
                if j["message_hours"] is not None:
                    rows.append(
                        event(
                            "community_message",
                            T0 + timedelta(hours=2 + j["message_hours"]),
                            user_id=user,
                            group_id="grp-p",
                        )
                    )
                if j["again_hours"] is not None:
                    rows.append(
                        event(
                            "order_paid",
                            T0 + timedelta(hours=2 + j["again_hours"]),
                            user_id=user,
                            order_id=f"{user}-2",
                            amount="5.00",
                        )
                    )
            send(*rows, now=T0 + timedelta(days=60))
            funnel = community_funnel(
                start=T0 - timedelta(days=1), end=T0 + timedelta(days=1), as_of=T0 + timedelta(days=60)
            )
            counts = [s["count"] for s in funnel["overall"]]
            assert counts[0] == len(journeys)
            assert all(a >= b for a, b in pairwise(counts))
            assert all(s["rate_from_previous"] is None or 0 <= s["rate_from_previous"] <= 1 for s in funnel["overall"])
            for step in range(5):
                assert sum(c["steps"][step]["count"] for c in funnel["by_channel"]) == counts[step]
            assert sum(o["steps"][0]["count"] for o in funnel["by_operator"]) == counts[2]
            assert sum(g["steps"][0]["count"] for g in funnel["by_group"]) == counts[3]
            raise _Rollback
    except _Rollback:
        pass
