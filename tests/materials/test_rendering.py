"""Templates: the sandbox, per-variable defaults, the refusals at save with their line, and the
channel limits (SMS segments by encoding, push title length)."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from materials.rendering import (
    RenderError,
    compile_templates,
    render,
    sms_max_segments,
    sms_size,
    template_problems,
)


def _render(channel: str, fields: dict, context: dict, defaults: dict | None = None, url: str = "") -> dict:
    compiled = compile_templates(channel=channel, fields=fields, defaults=defaults or {}, url=url)
    return render(compiled, context)


def test_a_template_that_does_not_parse_is_refused_with_its_line():
    problems = template_problems(channel="push", fields={"title": "Hi", "body": "Hello\n{{ name }\nbye"}, defaults={})
    assert [(p.field, p.line) for p in problems] == [("body", 2)]
    assert "unexpected" in problems[0].reason


def test_an_unknown_variable_without_default_is_refused_with_its_line():
    problems = template_problems(
        channel="sms", fields={"body": "Hi {{ name }},\n\nyour {{ loyalty_points }} points"}, defaults={}
    )
    assert [(p.field, p.line) for p in problems] == [("body", 3)]
    assert "'loyalty_points'" in problems[0].reason


def test_an_unknown_variable_with_a_default_is_accepted_and_renders_the_default():
    fields = {"body": "You have {{ loyalty_points }} points"}
    assert template_problems(channel="sms", fields=fields, defaults={"loyalty_points": "some"}) == []
    assert _render("sms", fields, {}, defaults={"loyalty_points": "some"})["body"] == "You have some points"


def test_settings_and_python_internals_are_out_of_reach():
    # Not a variable: refused at save like any unknown name.
    problems = template_problems(channel="sms", fields={"body": "{{ settings.SECRET_KEY }}"}, defaults={})
    assert problems and "'settings'" in problems[0].reason
    # Reaching Python objects through a known variable: the sandbox refuses it at save and at render.
    escape = "{{ name.__class__.__mro__[1].__subclasses__() }}"
    problems = template_problems(channel="sms", fields={"body": escape}, defaults={})
    assert problems and "SecurityError" in problems[0].reason
    with pytest.raises(RenderError, match="SecurityError"):
        _render("sms", {"body": escape}, {"name": "Ann"})
    # The sandbox hides unsafe attributes: reading one is an error, never the object.
    with pytest.raises(RenderError, match="has no attribute '__globals__'"):
        _render("sms", {"body": "{{ traits.items.__globals__ }}"}, {"traits": {}})


def test_a_missing_value_takes_the_default_and_without_one_fails_with_the_reason():
    fields = {"title": "Hi {{ name }}", "body": "In {{ city }}"}
    out = _render("push", fields, {"name": "", "city": "Hangzhou"}, defaults={"name": "friend"})
    assert out == {"title": "Hi friend", "body": "In Hangzhou"}
    with pytest.raises(RenderError, match="MISSING_VALUE: no value for 'city'"):
        _render("push", fields, {"name": "Ann", "city": ""}, defaults={"name": "friend"})


def test_html_is_escaped_and_plain_text_is_not():
    fields = {"title": "For {{ name }}", "body": "Hi {{ name }}", "html": "<p>Hi {{ name }}</p>"}
    out = _render("email", fields, {"name": "<b>Al & Bo</b>"})
    assert out["html"] == "<p>Hi &lt;b&gt;Al &amp; Bo&lt;/b&gt;</p>"
    assert out["body"] == "Hi <b>Al & Bo</b>"


def test_tags_and_traits_branch_the_message():
    fields = {"body": "{% if 'vip' in tags %}VIP {{ traits.plan }}{% else %}Hello{% endif %}"}
    assert _render("sms", fields, {"tags": ["vip"], "traits": {"plan": "gold"}})["body"] == "VIP gold"
    assert _render("sms", fields, {"tags": [], "traits": {}})["body"] == "Hello"


def test_a_link_needs_the_versions_url():
    problems = template_problems(channel="sms", fields={"body": "Go {{ link }}"}, defaults={})
    assert problems and problems[0].line == 1 and "URL" in problems[0].reason
    assert (
        template_problems(channel="sms", fields={"body": "Go {{ link }}"}, defaults={}, url="https://x.example") == []
    )


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("€" * 80, "GSM-7", 160, 1),  # each from the extension table costs two septets
        ("€" * 81, "GSM-7", 162, 2),
        ("你" * 70, "UCS-2", 70, 1),
        ("你" * 71, "UCS-2", 71, 2),
        ("a" * 69 + "你", "UCS-2", 70, 1),  # one character outside GSM-7 makes it all UCS-2
        ("a" * 134 + "你", "UCS-2", 135, 3),
        ("", "GSM-7", 0, 0),
    ],
)
def test_sms_segments_follow_the_encoding(text, encoding, units, segments):
    size = sms_size(text)
    assert (size.encoding, size.units, size.segments) == (encoding, units, segments)


def test_limits_are_checked_at_save_with_sample_values(settings):
    settings.OPSLOOP_PUSH_TITLE_MAX_CHARS = 20
    settings.OPSLOOP_SMS_MAX_SEGMENTS = 1
    push = template_problems(
        channel="push", fields={"title": "Hello {{ name }}, a long title", "body": "b"}, defaults={}
    )
    assert [p.field for p in push] == ["title"] and "at most 20" in push[0].reason
    sms = template_problems(channel="sms", fields={"body": "你好" * 40}, defaults={})
    assert [p.field for p in sms] == ["body"] and "UCS-2" in sms[0].reason
    hook = template_problems(channel="webhook", fields={"body": '{"name": {{ name }}}'}, defaults={})
    assert [p.field for p in hook] == ["body"] and "not JSON" in hook[0].reason
    assert template_problems(channel="webhook", fields={"body": '{"name": "{{ name }}"}'}, defaults={}) == []


def test_limits_are_checked_again_at_render_for_each_person(settings):
    settings.OPSLOOP_SMS_MAX_SEGMENTS = 1
    fields = {"body": "Hi {{ name }}!"}
    assert _render("sms", fields, {"name": "Ann"})["body"] == "Hi Ann!"
    with pytest.raises(RenderError, match=r"LIMIT: body: The SMS is .* UCS-2"):
        _render("sms", fields, {"name": "安" * 70})


VALUES = st.one_of(
    st.none(),
    st.just(""),
    st.text(alphabet=string.ascii_letters + " €{}", max_size=120),
    st.text(max_size=60),
)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    channel=st.sampled_from(["push", "sms"]),
    name=VALUES,
    city=VALUES,
    default_name=st.one_of(st.none(), st.text(max_size=30)),
    max_segments=st.integers(min_value=1, max_value=4),
)
def test_any_person_either_gets_a_message_within_the_limits_or_a_render_error(
    channel, name, city, default_name, max_segments
):
    """Whatever the person's values and the defaults, rendering never raises anything but a
    RenderError, and what it returns is within the channel's limits."""
    from django.test import override_settings

    fields = {"body": "Hello {{ name }} from {{ city }}"}
    if channel == "push":
        fields["title"] = "{{ name }}"
    defaults = {"name": default_name} if default_name is not None else {}
    with override_settings(OPSLOOP_SMS_MAX_SEGMENTS=max_segments):
        compiled = compile_templates(channel=channel, fields=fields, defaults=defaults)
        try:
            out = render(compiled, {"name": name, "city": city})
        except RenderError as exc:
            missing = (name in (None, "") and default_name is None) or city in (None, "")
            assert str(exc).startswith("MISSING_VALUE" if missing else "LIMIT")
            return
        assert city not in (None, "")
        if channel == "sms":
            assert sms_size(out["body"]).segments <= sms_max_segments() == max_segments
        else:
            assert len(out["title"]) <= 50 and out["body"].strip()


@pytest.mark.parametrize(
    "source, context",
    [
        ('{% if traits %}{{ "%(plan)s" % traits }}{% endif %}ok', {"traits": {"tier": "x"}}),  # KeyError
        ("{{ tags.pop() }}", {"tags": []}),  # IndexError (and a mutation, refused)
        ('{{ "{0}{1}".format(name) }}', {"name": "Ann"}),  # IndexError
        ("{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}", {}),  # RecursionError
    ],
)
def test_any_error_of_a_template_is_a_render_error_of_that_person(source, context):
    with pytest.raises(RenderError):
        _render("sms", {"body": source}, context)


def test_a_template_that_raises_at_save_is_a_problem_not_an_exception():
    problems = template_problems(
        channel="sms", fields={"body": "{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}"}, defaults={}
    )
    assert problems and problems[0].field == "template"


def test_templates_cannot_change_the_samples_or_a_persons_values():
    traits = {"plan": "gold"}
    with pytest.raises(RenderError, match="SecurityError"):
        _render("sms", {"body": '{{ traits.update({"plan": "x"}) or "" }}ok'}, {"traits": traits})
    assert traits == {"plan": "gold"}
    with pytest.raises(RenderError, match="SecurityError"):
        _render("sms", {"body": '{{ tags.append("x") or "" }}ok'}, {"tags": ["vip"]})
    # Even at save: the samples every other template is checked with stay as they were.
    template_problems(channel="sms", fields={"body": '{{ traits.update({"plan": "x"}) or "" }}ok'}, defaults={})
    from materials.rendering import sample_context

    assert sample_context()["traits"] == {} and sample_context()["tags"] == ["vip"]
    sample_context()["tags"].append("changed")
    assert sample_context()["tags"] == ["vip"]


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 10**10 }}",
        "{{ 'x' * 100000000 }}",
        "{{ 2 ** 100000 }}",
        "{{ (10 ** 100) ** 100 }}",
        "{{ [1] * 10**9 }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}ok",
        "{% for i in range(10**9) %}{% endfor %}ok",
        "{% for i in range(2000) %}{% for j in range(2000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
    ],
)
def test_a_template_that_would_use_unbounded_time_or_memory_fails_quickly(source):
    import time

    started = time.monotonic()
    with pytest.raises(RenderError):
        _render("sms", {"body": source}, {})
    assert time.monotonic() - started < 5
    assert template_problems(channel="sms", fields={"body": source}, defaults={})


def test_small_arithmetic_and_loops_still_work():
    body = "{{ 'ab' * 3 }} {{ 2 ** 10 }} {% for i in range(3) %}{{ i }}{% endfor %}"
    assert _render("sms", {"body": body}, {})["body"] == "ababab 1024 012"


def test_a_newline_in_a_persons_name_does_not_break_the_email_subject():
    fields = {"title": "Hello {{ name }}", "body": "Hi"}
    out = _render("email", fields, {"name": "Ann\nBcc: x@example.com"})
    assert "\n" not in out["title"] and "\r" not in out["title"]
    assert out["title"] == "Hello Ann Bcc: x@example.com"


@pytest.mark.parametrize(
    "source",
    [
        "{{ '%999999999s'|format(name) }}",
        "{{ '%-999999999d'|format(1) }}",
        "{{ '%.999999999f'|format(1.5) }}",
        "{{ '%*s'|format(999999999, name) }}",
        "{{ '%(n)999999999s'|format(n=name) }}",
        "{{ '%999999999s' % name }}",
        "{{ '{:>999999999}'.format(name) }}",
        "{{ '{:>{}}'.format(name, 999999999) }}",
        "{{ '{:.999999999f}'.format(1.5) }}",
        "{{ '{n:^999999999}'.format_map({'n': name}) }}",
        "{{ name|center(999999999) }}",
        "{{ name|indent(999999999, true) }}",
        "{{ ((name ~ '\n') * 9000)|indent('x' * 90000) }}",
        "{{ name|wordwrap(999999999) }}",
        "{{ ('a ' * 40000)|wordwrap(1, wrapstring='x' * 90000) }}",
        "{{ name|truncate(999999999) }}",
        "{{ name.ljust(999999999) }}",
        "{{ name.rjust(999999999) }}",
        "{{ name.center(999999999) }}",
        "{{ name.zfill(999999999) }}",
        "{{ ('\t' * 1000).expandtabs(90000) }}",
        "{{ range(1000)|join('x' * 99999) }}",
        "{{ ('x' * 99999).join(['a'] * 1000) }}",
        "{{ ('a' * 90000)|replace('a', 'bbbbbbbbbb') }}",
        "{{ ('a' * 90000).replace('a', 'bbbbbbbbbb') }}",
        "{{ name * 999999999 }}",
        "{% set ns = namespace(s='x' * 90000) %}{% for i in range(30) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set ns = namespace(s='x' * 90000) %}{% for i in range(30) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{% set ns = namespace(l=[1] * 90000) %}{% for i in range(30) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
        "{{ ('x' * 90000) ~ name ~ ('y' * 90000) }}",
    ],
)
def test_a_huge_string_is_refused_before_it_is_built(source):
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(RenderError) as refused:
            _render("sms", {"body": source}, {"name": "Ann"})
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The sandbox's refusal, not the output's length checked after the string was made.
    assert "SecurityError" in str(refused.value) and "TOO_LONG" not in str(refused.value)
    assert peak < 20_000_000
    problems = template_problems(channel="sms", fields={"body": source}, defaults={})
    assert problems and "refused" in problems[0].reason


def test_formats_widths_joins_and_replaces_of_ordinary_size_still_work():
    body = (
        "{{ '%5s|%-3d|%.2f'|format('ab', 7, 1.234) }} {{ '%03d' % 5 }} {{ '{:>4}|{:.1f}'.format('x', 2.25) }}"
        " {{ 'ab'|center(6) }}{{ 'a b c'|wordwrap(3, wrapstring='/') }} {{ 'hello world'|truncate(8, leeway=0) }}"
        " {{ ['a', 'b']|join('-') }} {{ 'x'.ljust(3) }}| {{ 'aa'|replace('a', 'bc') }} {{ '-'.join(['p', 'q']) }}"
        " {{ 'a' ~ 1 ~ 'b' }} {{ 'c' + 'd' }} {{ ([1] + [2])|length + 1 }}"
    )
    assert _render("sms", {"body": body}, {})["body"] == (
        "   ab|7  |1.23 005    x|2.2   ab  a b/c hello... a-b x  | bcbc p-q a1b cd 3"
    )
