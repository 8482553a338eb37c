"""The admin's segment builder: the condition kinds it offers come from segments.py, and its live
check answers size and sample, warns about names nobody has, and lists what is allowed on errors."""

import json
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns import segment_builder, segments
from campaigns.models import Segment
from profiles.models import Profile
from tests.factories.campaigns import add_events, make_profiles

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client, make_staff):
    client.force_login(make_staff(superuser=True))
    return client


def check(client, definition):
    reply = client.post(
        reverse("admin:campaigns_segment_check"), json.dumps(definition), content_type="application/json"
    )
    assert reply.status_code == 200
    return reply.json()


def test_the_builder_offers_the_leaf_kinds_of_segments_py_and_predicted_tiers_only_when_they_exist():
    kinds = [k["key"] for k in segment_builder.builder_options()["kinds"]]
    leaves = [k for k in segments.CONDITION_KEYS if k not in ("all", "any", "not", "predicted_tier", "uplift")]
    assert kinds == leaves
    lifecycle = next(k for k in segment_builder.builder_options()["kinds"] if k["key"] == "lifecycle")
    assert ("active", "Active") in lifecycle["choices"]


def test_the_live_check_gives_size_and_sample_of_an_unsaved_definition(operator):
    make_profiles(7, prefix="fan", tag="prefers_beauty")
    make_profiles(3, prefix="other", tag="prefers_books")

    answer = check(operator, {"all": [{"tag": "prefers_beauty"}]})

    assert (answer["size"], answer["errors"], answer["warnings"]) == (7, [], [])
    assert len(answer["sample"]) == 7 and all(u.startswith("fan") for u in answer["sample"])
    assert not Segment.objects.exists()


def test_a_misspelled_tag_event_or_trait_value_is_warned_about_before_saving(operator):
    make_profiles(3, prefix="bj", tag="prefers_beauty", city="Beijing")
    now = timezone.now()
    add_events([("bj00000", "order_paid", now - timedelta(days=1))])

    answer = check(
        operator,
        {
            "all": [
                {"tag": "prefers_beuaty"},
                {"event": "order_payed", "op": "gte", "count": 1, "within_days": 30},
                {"trait": "city", "op": "eq", "value": "Bejing"},
            ]
        },
    )

    assert answer["size"] == 0
    assert answer["warnings"] == [
        "Nobody has the tag 'prefers_beuaty' (check the spelling).",
        "No event named 'order_payed' has been recorded (check the spelling).",
        "No profile has city = 'Bejing' (check the spelling).",
    ]
    right = {"all": [{"tag": "prefers_beauty"}, {"event": "order_paid"}, {"trait": "city", "value": "Beijing"}]}
    assert check(operator, right) == {**check(operator, right), "warnings": [], "errors": [], "size": 1}


def test_errors_name_the_place_and_list_the_fields_that_are_allowed(operator):
    answer = check(operator, {"city": "Beijing"})

    (error,) = answer["errors"]
    assert error.startswith("definition: unknown field(s) 'city'; a condition is one of all, any, not, tag")
    assert "trait" in error and "event" in error
    stray = check(operator, {"tag": "x", "value": 3})["errors"][0]
    assert stray == "definition: field(s) 'value' do not apply to 'tag' (it takes nothing else)"


def test_saving_a_segment_that_matches_nobody_warns_on_the_page(operator):
    make_profiles(2, tag="prefers_beauty")
    reply = operator.post(
        reverse("admin:campaigns_segment_add"),
        {"name": "typo", "definition": json.dumps({"tag": "prefers_beuaty"}), "description": ""},
        follow=True,
    )
    assert Segment.objects.filter(name="typo").exists()
    assert "Nobody has the tag &#x27;prefers_beuaty&#x27;" in reply.content.decode()


def test_the_segment_page_draws_the_builder_with_the_json_still_editable(operator):
    html = operator.get(reverse("admin:campaigns_segment_add")).content.decode()
    assert 'class="segment-builder"' in html and "campaigns/segment_builder.js" in html
    assert '<textarea name="definition"' in html


LEAVES = st.one_of(
    st.builds(lambda t: {"tag": t}, st.sampled_from(["prefers_beauty", "nobody_has_this", ""])),
    st.builds(lambda t: {"tier": t}, st.sampled_from(["core", "platinum", ["core", "ordinary"]])),
    st.builds(lambda v: {"lifecycle": v}, st.sampled_from(["active", "churned", "asleep"])),
    st.builds(
        lambda name, op, value: {"trait": name, "op": op, "value": value},
        st.sampled_from(["city", "push_opt_in", "vip_level", "signup_at"]),
        st.sampled_from([*segments.TRAIT_OPS, "between"]),
        st.one_of(st.text(max_size=8), st.integers(-5, 5), st.booleans(), st.lists(st.text(max_size=4), max_size=3)),
    ),
    st.builds(
        lambda name, op, count, days: {"event": name, "op": op, "count": count, "within_days": days},
        st.sampled_from(["order_paid", "order_payed"]),
        st.sampled_from([*segments.EVENT_OPS, "gt"]),
        st.integers(-1, 5),
        st.integers(0, 4000),
    ),
)
# Trees as the builder draws them: groups inside groups, any condition or group negated.
TREES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.builds(lambda k, items: {k: items}, st.sampled_from(["all", "any"]), st.lists(inner, max_size=3)),
        st.builds(lambda node: {"not": node}, inner),
    ),
    max_leaves=8,
)
DEFINITIONS = st.one_of(
    TREES,
    # What a hand-edited JSON may hold: a `not` of a list, stray fields.
    st.builds(lambda items: {"not": items}, st.lists(LEAVES, max_size=2)),
    st.dictionaries(st.sampled_from(["city", "tag", "value", "not"]), st.text(max_size=4), min_size=1, max_size=2),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(definition=DEFINITIONS)
def test_any_definition_the_builder_can_send_gets_errors_or_a_size_never_a_crash(operator, definition):
    if not Profile.objects.exists():  # the examples share the test's transaction
        make_profiles(2, prefix="h", tag="prefers_beauty", city="Beijing")
    answer = check(operator, definition)
    assert isinstance(answer["warnings"], list)
    if answer["errors"]:
        assert answer["size"] is None
        assert all(e.split(":", 1)[0] for e in answer["errors"])  # each names its place
    else:
        assert isinstance(answer["size"], int) and answer["size"] >= 0


def test_the_uplift_condition_is_offered_for_the_rules_whose_model_scored_people(operator):
    from coupons.models import UpliftScore
    from tests.factories.coupons import CouponRuleFactory

    scored, unscored = CouponRuleFactory(name="Winback 20 off"), CouponRuleFactory(name="Never fitted")
    people = make_profiles(10, prefix="up")
    UpliftScore.objects.bulk_create(
        [
            UpliftScore(rule=scored, profile=p, uplift=float(i))
            for i, p in enumerate(Profile.objects.filter(pk__in=[p.pk for p in people]))
        ]
    )
    uplift = next(k for k in segment_builder.builder_options()["kinds"] if k["key"] == "uplift")
    assert uplift["shape"] == "uplift" and uplift["choices"] == [(str(scored.pk), f"Winback 20 off (#{scored.pk})")]
    assert str(unscored.pk) not in dict(uplift["choices"])

    # What the builder writes for it is a valid definition with the expected size.
    answer = check(operator, {"all": [{"uplift": scored.pk, "top_percent": 30}]})
    assert (answer["size"], answer["errors"]) == (3, [])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(definition=TREES)
def test_a_negated_tree_holds_exactly_the_people_the_tree_leaves_out(operator, definition):
    if not Profile.objects.exists():  # the examples share the test's transaction
        make_profiles(3, prefix="h", tag="prefers_beauty", city="Beijing")
        make_profiles(2, prefix="k", tag=None)
    answer = check(operator, definition)
    negated = check(operator, {"not": definition})
    assert bool(answer["errors"]) == bool(negated["errors"])
    if not answer["errors"]:
        # People without the trait (NULL) fall outside the condition, so inside its negation.
        assert answer["size"] + negated["size"] == Profile.objects.count()


def test_nested_groups_and_not_compile_and_a_not_of_a_list_names_what_it_takes(operator):
    make_profiles(4, prefix="b", tag="prefers_beauty", city="Beijing")
    make_profiles(3, prefix="s", tag="prefers_beauty", city="Shanghai")
    make_profiles(2, prefix="n", tag=None, city="Beijing")
    nested = {
        "all": [
            {"tag": "prefers_beauty"},
            {"any": [{"not": {"any": [{"trait": "city", "op": "eq", "value": "Beijing"}]}}, {"all": [{"tag": "x"}]}]},
        ]
    }
    assert check(operator, nested)["size"] == 3
    answer = check(operator, {"not": [{"tag": "prefers_beauty"}]})
    assert answer["size"] is None
    (error,) = answer["errors"]
    assert error.startswith("not: takes one condition") and "tag, tier" in error and "wrap them in all or any" in error


def test_the_builder_page_loads_the_javascript_catalogue_its_strings_go_through(operator):
    html = operator.get(reverse("admin:campaigns_segment_add")).content.decode()
    assert f'<script src="{reverse("javascript-catalog")}"></script>' in html
    catalogue = operator.get(reverse("javascript-catalog"))
    assert catalogue.status_code == 200 and "javascript" in catalogue["Content-Type"]
    assert "globals.gettext = django.gettext" in catalogue.content.decode()


# --- the rows' typed values (the builder's own JavaScript, run by Node) --------------------------

BUILDER_JS = Path(__file__).resolve().parents[2] / "campaigns" / "static" / "campaigns" / "segment_builder.js"


def converted(cases: list[tuple[str, str | None, str]]) -> list[object]:
    """What the rows write for each (typed text, type the definition had, operator)."""
    node = shutil.which("node")
    assert node, "Node.js is missing"
    script = (
        "global.window = {}; global.document = {addEventListener: function () {}};"
        f"require({json.dumps(str(BUILDER_JS))});"
        "const cases = JSON.parse(process.argv[1]);"
        "const like = c => (c[1] === null ? undefined : c[1]);"
        "console.log(JSON.stringify(cases.map(c => window.opsloopSegmentScalar(c[0], like(c), c[2]))));"
    )
    done = subprocess.run([node, "-e", script, json.dumps(cases)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_trait_value_keeps_the_type_the_definition_gave_it():
    assert converted(
        [
            ("01234", "string", "eq"),  # a code with a leading zero stays the code
            ("123", "string", "eq"),  # a JSON string stays a string when the row is edited
            ("123", "string", "in"),
            ("123", "string", "gte"),  # unless the operator picks a number comparison
            ("42", "number", "eq"),
            ("2.5", "number", "ne"),
            ("true", "boolean", "eq"),
            ("01234", None, "eq"),  # a new value: a number only when written as JSON writes one
            ("1234", None, "eq"),
            ("false", None, "eq"),
            (" Beijing ", None, "eq"),
        ]
    ) == ["01234", "123", "123", 123, 42, 2.5, True, "01234", 1234, False, "Beijing"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(alphabet="0123456789.-abc ", min_size=1, max_size=8),
    op=st.sampled_from([op for op in segments.TRAIT_OPS if op not in ("gte", "lte")]),
)
def test_a_string_value_stays_the_same_string_under_any_non_number_comparison(text, op):
    assert converted([(text, "string", op)]) == [text.strip()]
