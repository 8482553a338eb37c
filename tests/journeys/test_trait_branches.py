"""Branching on a trait with operators: checked at save with the step and the reason, walked by
each person's value, and the same as a plain-Python reading of the rules for any trait value and
operator (hypothesis)."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from journeys import errors, services
from journeys.models import JourneyRun, JourneyStep, TraitOperator
from profiles.models import Profile
from tests.factories.campaigns import CampaignFactory, make_profiles

# --- a plain reading of the rules ------------------------------------------------------------------


def _number(x: Any) -> Fraction | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int):
        return Fraction(x)
    if isinstance(x, float):
        return Fraction(repr(x))
    if isinstance(x, str) and re.fullmatch(r"\s*-?(\d+\.?\d*|\.\d+)\s*", x):
        return Fraction(x.strip())
    return None


def _date(x: Any) -> dt.date | None:
    if isinstance(x, str) and re.match(r"\d{4}-\d{2}-\d{2}", x):
        try:
            return dt.datetime.strptime(x[:10], "%Y-%m-%d").date()
        except ValueError:
            return None
    return None


def _same(value: Any, operand: str) -> bool:
    if isinstance(value, bool) and operand.lower() in ("true", "false"):
        return value == (operand.lower() == "true")
    if isinstance(value, int | float) and not isinstance(value, bool):
        a, b = _number(value), _number(operand)
        if a is not None and b is not None:
            return a == b
    return ("" if value is None else str(value)) == operand


def reference(value: Any, op: str, operand: str) -> bool:
    absent = value is None or value == ""
    if op == "exists":
        return not absent
    if op == "missing":
        return absent
    if op in ("", "eq"):
        return _same(value, operand)
    if op == "ne":
        return not _same(value, operand)
    if op in ("gt", "gte", "lt", "lte"):
        if _number(operand) is not None:
            a, b = _number(value), _number(operand)
        else:
            a, b = _date(value), _date(operand)
        if a is None or b is None:
            return False
        return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]
    if absent:
        return False
    if op == "in":
        return any(_same(value, item.strip()) for item in operand.split(",") if item.strip())
    if op == "contains":
        if isinstance(value, list):
            return any(str(item) == operand for item in value)
        return isinstance(value, str) and operand in value
    raise AssertionError(op)


# --- what is drawn -------------------------------------------------------------------------------

words = st.text(alphabet="abcxyz", min_size=1, max_size=4)
small_ints = st.integers(min_value=-50, max_value=50)
number_texts = st.one_of(
    small_ints.map(str),
    st.decimals(min_value=-50, max_value=50, places=2, allow_nan=False, allow_infinity=False).map(str),
)
dates = st.dates(min_value=dt.date(2020, 1, 1), max_value=dt.date(2030, 12, 31))
trait_values = st.one_of(
    st.none(),
    st.just(""),
    st.booleans(),
    small_ints,
    st.floats(min_value=-50, max_value=50, allow_nan=False).map(lambda f: round(f, 2)),
    number_texts,
    dates.map(dt.date.isoformat),
    st.builds(lambda d, h: dt.datetime.combine(d, dt.time(h)).isoformat() + "Z", dates, st.integers(0, 23)),
    words,
    st.lists(st.one_of(words, small_ints), max_size=3),
)
scalar_operands = st.one_of(words, number_texts, dates.map(dt.date.isoformat), st.just(""))


@st.composite
def conditions(draw: Any) -> tuple[str, str]:
    op = draw(st.sampled_from([*TraitOperator.values, ""]))
    if op in ("gt", "gte", "lt", "lte"):
        operand = draw(st.one_of(number_texts, dates.map(dt.date.isoformat)))
    elif op == "in":
        operand = ",".join(draw(st.lists(st.one_of(words, number_texts), min_size=1, max_size=4)))
    elif op == "contains":
        operand = draw(st.one_of(words, small_ints.map(str)))
    elif op in ("exists", "missing"):
        operand = ""
    else:
        operand = draw(st.one_of(scalar_operands, st.sampled_from(["true", "false", "True"])))
    return op, operand


def _holds(traits: dict[str, Any], name: str, op: str, operand: str) -> bool:
    """The journey's own branch check on an unsaved person and step."""
    run = JourneyRun(profile=Profile(user_id="u", traits=traits), user_id="u")
    step = JourneyStep(kind="branch", branch_on="trait", trait=name, trait_operator=op, trait_value=operand)
    return services._holds(run, step)


@hsettings(max_examples=600, deadline=None)
@given(
    traits=st.dictionaries(st.sampled_from(["plan", "orders", "since"]), trait_values, max_size=3),
    name=st.sampled_from(["plan", "orders", "since"]),
    condition=conditions(),
)
def test_any_trait_and_operator_branch_as_the_plain_reading_of_the_rules(traits, name, condition):
    op, operand = condition
    # Every drawn condition is one the steps accept at save.
    assert services.step_problems(_NO_CAMPAIGN, [_branch(name, op, operand)]) == {}
    assert _holds(traits, name, op, operand) == reference(traits.get(name), op, operand)


class _NoCampaign:
    class variants:
        @staticmethod
        def values_list(*args: Any, **kwargs: Any) -> list[int]:
            return []


_NO_CAMPAIGN: Any = _NoCampaign()


def _branch(trait: str, op: str, operand: str) -> dict[str, Any]:
    return {
        "kind": "branch",
        "branch_on": "trait",
        "trait": trait,
        "trait_operator": op,
        "trait_value": operand,
        "goto": 1,
    }


@pytest.mark.parametrize(
    ("value", "op", "operand", "holds"),
    [
        (10, "gt", "9.5", True),
        (10, "eq", "10.0", True),
        ("10", "eq", "10.0", False),
        ("01234", "eq", "1234", False),
        ("1e3", "eq", "1000", False),
        (1000, "eq", "1e3", True),
        (True, "eq", "true", True),
        (True, "eq", "TRUE", True),
        (False, "eq", "true", False),
        (True, "ne", "false", True),
        ("a,b", "in", '"a,b", c', True),
        ("a", "in", '"a,b", c', False),
        ("a,b", "in", '["a,b", "c"]', True),
        (3, "in", "[1, 2, 3]", True),
        ("01", "in", "1, 2", False),
        ("2026-03-01T08:00:00Z", "gte", "2026-03-01", True),
        ("2026-02-28", "gt", "2026-03-01", False),
        ("gold", "in", "silver, gold", True),
        (["vip", "beta"], "contains", "beta", True),
        ("premium", "contains", "mium", True),
        (None, "missing", "", True),
        ("", "exists", "", False),
        ("abc", "lt", "5", False),
        (None, "ne", "x", True),
    ],
)
def test_examples_of_each_operator(value, op, operand, holds):
    assert _holds({"t": value}, "t", op, operand) is holds


@pytest.mark.parametrize(
    ("op", "operand", "words"),
    [
        ("gt", "soon", "trait_value"),
        ("lte", "", "trait_value"),
        ("in", " , ", "trait_value"),
        ("contains", "", "trait_value"),
        ("exists", "x", "trait_value"),
        ("between", "1", "trait_operator"),
    ],
)
def test_a_condition_that_cannot_be_compared_is_refused_at_save_with_the_field(op, operand, words):
    assert words in services.step_problems(_NO_CAMPAIGN, [_branch("plan", op, operand)])["steps[0]"]


@pytest.mark.django_db
def test_the_api_refuses_a_bad_condition_with_the_step_and_the_field(api_client):
    campaign = CampaignFactory(variants=[("A", 100)])
    url = f"/api/v1/campaigns/{campaign.pk}/journey"
    bad = {**_branch("orders", "gt", "many"), "trait_operator": "gt"}
    response = api_client.put(url, {"steps": [bad, {"kind": "send", "variant": "A"}]}, format="json")
    assert response.status_code == 422
    assert "trait_value" in response.json()["fields"]["steps[0]"]
    response = api_client.put(url, {"steps": [{**bad, "trait_operator": "about"}]}, format="json")
    assert response.status_code == 400 and "trait_operator" in str(response.json())
    with pytest.raises(errors.InvalidSteps):
        services.set_steps(campaign=campaign, steps=[_branch("orders", "in", "")])


@pytest.mark.django_db
def test_people_take_the_path_their_trait_meets(api_client):
    people = make_profiles(3)
    for p, orders in zip(people, [1, 3, None], strict=True):
        Profile.objects.filter(pk=p.pk).update(traits={} if orders is None else {"orders": orders})
    campaign = CampaignFactory(variants=[("Loyal", 50), ("New", 50)], holdout_percent=Decimal(0))
    url = f"/api/v1/campaigns/{campaign.pk}/journey"
    steps = [
        {
            "kind": "branch",
            "branch_on": "trait",
            "trait": "orders",
            "trait_operator": "gte",
            "trait_value": "3",
            "goto": 3,
        },
        {"kind": "send", "variant": "New"},
        {"kind": "branch", "branch_on": "trait", "trait": "orders", "trait_operator": "exists", "goto": 4},
        {"kind": "send", "variant": "Loyal"},
    ]
    response = api_client.put(url, {"steps": steps}, format="json")
    assert response.status_code == 200
    assert response.json()["steps"][0]["label"] == "If orders is greater than or equal to 3: go to step 3, else go on"
    services.launch_journey(campaign=campaign)
    services.advance_due()
    from campaigns.models import Delivery

    got = set(Delivery.objects.filter(campaign=campaign).values_list("user_id", "variant__name"))
    # 1 order: New, then the trait exists, so the end; 3 orders: straight to Loyal; none: both.
    a, b, c = (p.user_id for p in people)
    assert got == {(a, "New"), (b, "Loyal"), (c, "New"), (c, "Loyal")}
