"""Rendering materials for one person, with Jinja2's sandbox.

Templates are written by operators, so they run in `SandboxedEnvironment`: no attribute that
starts with an underscore, no function of ours, no settings; only the variables below. A
variable the person has no value for takes the version's default for it; without a default that
person's message fails with the reason (and only that one). Channel limits (push title length,
SMS segments by encoding, a JSON object for webhooks) are checked when a version is saved, when
it is approved and on every rendered message.

Jinja2: https://jinja.palletsprojects.com/en/stable/sandbox/
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import gsm0338  # noqa: F401  (registers the gsm03.38 codec)
from django.conf import settings
from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment

# The variables a template may use, with a sample of each for previews and the checks at save.
VARIABLES: dict[str, tuple[str, Any]] = {
    "name": ("The person's name", "Alex Chen"),
    "city": ("The person's city", "Shanghai"),
    "tier": ("The value tier's name (RFM)", "Core"),
    "predicted_value": ("Predicted spend over the next year (a decimal)", Decimal("1280.00")),
    "tags": ("The person's tag names (`'vip' in tags`)", ["vip"]),
    "traits": ("The person's custom traits (`traits.plan`)", {}),
    "user_id": ("The product's user id", "u-1001"),
    "coupon_code": ("The coupon issued with this message", "SAVE-7F3K2Q"),
    "coupon_amount": ("What the coupon takes off: an amount, or a percentage with %", "30.00"),
    "coupon_expiry": ("When the coupon expires (YYYY-MM-DD)", "2026-12-31"),
    "link": ("The tracked link to the version's URL", "https://example.com/t/c/sample"),
}
# Per-person values that are never missing once a person is known.
ALWAYS_PRESENT = frozenset({"tags", "traits", "user_id"})
MAX_RENDERED_CHARS = 100_000


def _limit(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def push_title_max() -> int:
    return _limit("OPSLOOP_PUSH_TITLE_MAX_CHARS", 50)


def push_body_max() -> int:
    return _limit("OPSLOOP_PUSH_BODY_MAX_CHARS", 240)


def sms_max_segments() -> int:
    return _limit("OPSLOOP_SMS_MAX_SEGMENTS", 2)


def email_subject_max() -> int:
    return _limit("OPSLOOP_EMAIL_SUBJECT_MAX_CHARS", 200)


@dataclass(frozen=True)
class SmsSize:
    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets, or UTF-16 code units
    segments: int


def sms_size(text: str) -> SmsSize:
    """Segments of an SMS: GSM-7 fits 160 septets in one message and 153 per part of a longer
    one; any character outside it makes the whole text UCS-2, 70 and 67 code units."""
    try:
        # The codec writes a character of the extension table as an escape and itself: two
        # septets, as it costs on the air (3GPP TS 23.038).
        units = len(text.encode("gsm03.38"))
        single, part, encoding = 160, 153, "GSM-7"
    except UnicodeEncodeError:
        units = len(text.encode("utf-16-le")) // 2
        single, part, encoding = 70, 67, "UCS-2"
    segments = 0 if units == 0 else 1 if units <= single else math.ceil(units / part)
    return SmsSize(encoding, units, segments)


@dataclass(frozen=True)
class Problem:
    field: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.field}, line {self.line}: {self.reason}" if self.line else f"{self.field}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "line": self.line, "reason": self.reason}


class RenderError(Exception):
    """One person's message cannot be made; the message fails with this reason."""


_plain = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
_html = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True, keep_trailing_newline=False)


def _env(field_name: str) -> SandboxedEnvironment:
    return _html if field_name == "html" else _plain


@dataclass
class Compiled:
    """A version's templates parsed once, with the variables each reads."""

    channel: str
    templates: dict[str, Any] = field(default_factory=dict)
    variables: set[str] = field(default_factory=set)
    defaults: dict[str, str] = field(default_factory=dict)
    has_url: bool = False


def template_problems(
    *, channel: str, fields: dict[str, str], defaults: dict[str, Any], url: str = ""
) -> list[Problem]:
    """Every reason these templates cannot be saved: a syntax error (its line), a variable that
    is neither known nor given a default (its first line), a default that is not text, a link
    without a URL, or a message over the channel's limit with sample values."""
    problems: list[Problem] = []
    if not isinstance(defaults, dict):
        return [Problem("defaults", None, "An object of variable name -> text.")]
    for name, value in defaults.items():
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            problems.append(Problem("defaults", None, f"The default of {name!r} must be text or a number."))
    for field_name, source in fields.items():
        try:
            ast = _env(field_name).parse(source)
        except TemplateSyntaxError as exc:
            problems.append(Problem(field_name, exc.lineno, exc.message or "syntax error"))
            continue
        for var, line in _first_lines(ast).items():
            if var not in VARIABLES and var not in defaults:
                known = ", ".join(sorted(VARIABLES))
                problems.append(
                    Problem(field_name, line, f"Unknown variable {var!r} and no default for it (known: {known}).")
                )
            elif var == "link" and not url:
                problems.append(Problem(field_name, line, "{{ link }} needs the version's URL (where the link leads)."))
    if problems:
        return problems
    compiled = compile_templates(channel=channel, fields=fields, defaults=defaults, url=url)
    try:
        render(compiled, sample_context(), check_limits=False)
    except RenderError as exc:
        return [Problem("template", None, f"Does not render with sample values: {exc}")]
    sample = render(compiled, sample_context(), check_limits=False)
    return [Problem(f, None, reason) for f, reason in limit_problems(channel, sample)]


def _first_lines(ast: nodes.Template) -> dict[str, int]:
    """Each variable the template reads from outside, with the first line it appears on."""
    undeclared = meta.find_undeclared_variables(ast)
    lines: dict[str, int] = {}
    for node in ast.find_all(nodes.Name):
        if node.name in undeclared and node.ctx == "load":
            lines.setdefault(node.name, node.lineno)
    return lines


def compile_templates(*, channel: str, fields: dict[str, str], defaults: dict[str, Any], url: str = "") -> Compiled:
    compiled = Compiled(channel=channel, defaults={k: str(v) for k, v in defaults.items()}, has_url=bool(url))
    for field_name, source in fields.items():
        env = _env(field_name)
        ast = env.parse(source)
        compiled.variables |= meta.find_undeclared_variables(ast)
        compiled.templates[field_name] = env.from_string(ast)
    return compiled


def _missing(value: Any) -> bool:
    return value is None or value == ""


def render(compiled: Compiled, context: dict[str, Any], *, check_limits: bool = True) -> dict[str, str]:
    """The message of one person: each field rendered. RenderError names what went wrong."""
    values: dict[str, Any] = {}
    for var in compiled.variables:
        value = context.get(var)
        if _missing(value):
            if var in compiled.defaults:
                value = compiled.defaults[var]
            elif var not in ALWAYS_PRESENT:
                raise RenderError(f"MISSING_VALUE: no value for {var!r} and no default")
        values[var] = value
    out: dict[str, str] = {}
    for field_name, template in compiled.templates.items():
        try:
            text = template.render(values)
        except TemplateError as exc:
            # SecurityError (the sandbox), UndefinedError (traits.x absent), TypeError-like errors.
            raise RenderError(f"{exc.__class__.__name__}: {exc}"[:400]) from exc
        except (ArithmeticError, TypeError, ValueError, OverflowError) as exc:
            raise RenderError(f"{exc.__class__.__name__}: {exc}"[:400]) from exc
        if len(text) > MAX_RENDERED_CHARS:
            raise RenderError(f"TOO_LONG: {field_name} renders to {len(text)} characters")
        out[field_name] = text.strip() if field_name == "title" else text
    if check_limits and (problems := limit_problems(compiled.channel, out)):
        raise RenderError("LIMIT: " + "; ".join(f"{f}: {r}" for f, r in problems))
    return out


def limit_problems(channel: str, rendered: dict[str, str]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    title, body = rendered.get("title", ""), rendered.get("body", "")
    if channel == "push":
        if len(title) > push_title_max():
            problems.append(("title", f"The push title is {len(title)} characters; at most {push_title_max()}."))
        if len(body) > push_body_max():
            problems.append(("body", f"The push body is {len(body)} characters; at most {push_body_max()}."))
        if not body.strip():
            problems.append(("body", "A push needs a body."))
    elif channel == "sms":
        size = sms_size(body)
        if size.segments > sms_max_segments():
            problems.append(
                (
                    "body",
                    f"The SMS is {size.units} {size.encoding} characters, {size.segments} segments; at most "
                    f"{sms_max_segments()} (GSM-7: 160 in one, 153 per segment; UCS-2: 70 and 67).",
                )
            )
        if not body.strip():
            problems.append(("body", "An SMS needs text."))
    elif channel == "email":
        if len(title) > email_subject_max():
            problems.append(("title", f"The subject is {len(title)} characters; at most {email_subject_max()}."))
        if not title.strip():
            problems.append(("title", "An e-mail needs a subject."))
        if not body.strip() and not rendered.get("html", "").strip():
            problems.append(("body", "An e-mail needs a text or an HTML body."))
    elif channel == "webhook":
        try:
            data = json.loads(body)
        except ValueError as exc:
            problems.append(("body", f"The webhook body is not JSON: {exc}"))
        else:
            if not isinstance(data, dict):
                problems.append(("body", "The webhook body must be a JSON object."))
    return problems


def sample_context() -> dict[str, Any]:
    return {name: sample for name, (_description, sample) in VARIABLES.items()}
