"""Rendering materials for one person, with Jinja2's sandbox.

Templates are written by operators, so they run in `ImmutableSandboxedEnvironment`: no attribute
that starts with an underscore, no function of ours, no settings, no changing a list or a dict
handed in; only the variables below. Work is bounded too: `*` and `**` refuse results past a
size, `range` is short and all of a message's loops over ranges share one budget of steps, and
output stops past MAX_RENDERED_CHARS. What could build one huge string in a single call is
refused before it is built: a width or precision past MAX_RENDERED_CHARS in a format (`%`, the
`format` filter, `str.format`), the widths of `center`, `indent`, `wordwrap`, `truncate` and of
the string methods that pad, and a `join` or `replace` whose result would be longer than that;
so is a `~` or `+` of strings or lists past that size (a string doubled in a loop through a
`namespace` would otherwise grow without end).
Any error a template raises fails that person's message (RenderError), never the caller. A
variable the person has no value for takes the version's default for it; without a default that
person's message fails with the reason (and only that one). Channel limits (push title length,
SMS segments by encoding, a JSON object for webhooks) are checked when a version is saved, when
it is approved and on every rendered message.

Jinja2: https://jinja.palletsprojects.com/en/stable/sandbox/
"""

from __future__ import annotations

import contextvars
import copy
import json
import math
import operator
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import gsm0338  # noqa: F401  (registers the gsm03.38 codec)
from django.conf import settings
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes, pass_environment, pass_eval_context
from jinja2 import filters as jinja_filters
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from markupsafe import Markup

# The variables a template may use, with a sample of each for previews and the checks at save.
VARIABLES: dict[str, tuple[str, Any]] = {
    "name": (_("The person's name"), "Alex Chen"),
    "city": (_("The person's city"), "Shanghai"),
    "tier": (_("The value tier's name (RFM)"), "Core"),
    "predicted_value": (_("Predicted spend over the next year (a decimal)"), Decimal("1280.00")),
    "tags": (_("The person's tag names (`'vip' in tags`)"), ["vip"]),
    "traits": (_("The person's custom traits (`traits.plan`)"), {}),
    "user_id": (_("The product's user id"), "u-1001"),
    "coupon_code": (_("The coupon issued with this message"), "SAVE-7F3K2Q"),
    "coupon_amount": (_("What the coupon takes off: an amount, or a percentage with %"), "30.00"),
    "coupon_expiry": (_("When the coupon expires (YYYY-MM-DD)"), "2026-12-31"),
    "link": (_("The tracked link to the version's URL"), "https://example.com/t/c/sample"),
}
# Per-person values that are never missing once a person is known.
ALWAYS_PRESENT = frozenset({"tags", "traits", "user_id"})
MAX_RENDERED_CHARS = 100_000
# The longest `range` a template may make, and the steps all of one message's ranges may take
# together (nested loops multiply): enough for any real message, far from hanging a worker.
MAX_RANGE = 1_000
MAX_LOOP_STEPS = 20_000
# The largest integer `*` or `**` may make, in bits (about 300 digits).
MAX_INT_BITS = 1_000


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


_steps_left: contextvars.ContextVar[list[int]] = contextvars.ContextVar("material_loop_steps")


class _BoundedRange:
    """A `range` whose steps count against the message's budget, so nested loops stay small."""

    def __init__(self, rng: range) -> None:
        self._rng = rng

    def __len__(self) -> int:
        return len(self._rng)

    def __getitem__(self, index: Any) -> Any:
        return self._rng[index]

    def __iter__(self) -> Any:
        budget = _steps_left.get(None)
        for value in self._rng:
            if budget is not None:
                budget[0] -= 1
                if budget[0] < 0:
                    raise SecurityError(f"The loops take more than {MAX_LOOP_STEPS} steps in all.")
            yield value


def _bounded_range(*args: int) -> _BoundedRange:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise SecurityError(f"range() makes at most {MAX_RANGE} numbers.")
    return _BoundedRange(rng)


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, str | list | tuple) else None


def _int_bits(value: Any) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


def _too_wide(number: Any) -> bool:
    return isinstance(number, int) and not isinstance(number, bool) and number > MAX_RENDERED_CHARS


def _refuse_wide_spec(spec: str) -> None:
    """A format specification (`>999999999`, `.999999f`, `%999999s`) whose width or precision
    would build a string longer than a whole message."""
    for digits in re.findall(r"\d+", spec):
        stripped = digits.lstrip("0")
        if len(stripped) > len(str(MAX_RENDERED_CHARS)) or (stripped and int(stripped) > MAX_RENDERED_CHARS):
            raise SecurityError(f"A format width or precision past {MAX_RENDERED_CHARS} is refused ({spec!r}).")


# One conversion of printf-style formatting: `%(key)-08.3f`, `%*d`, `%%`.
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?([#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?)[hlL]?[a-zA-Z%]")


def _refuse_wide_percent(template: str) -> None:
    for spec in _PERCENT_SPEC.findall(template):
        if "*" in spec:
            raise SecurityError("A width or precision taken from the arguments (`*`) is refused.")
        _refuse_wide_spec(spec)


def _refuse_longer_than_message(size: int, what: str) -> None:
    if size > MAX_RENDERED_CHARS:
        raise SecurityError(f"{what} is refused: it would make more than {MAX_RENDERED_CHARS} characters.")


class _BoundedFormatter(SandboxedFormatter):
    def format_field(self, value: Any, format_spec: str) -> Any:
        _refuse_wide_spec(format_spec)
        return super().format_field(value, format_spec)


class _BoundedEscapeFormatter(SandboxedEscapeFormatter):
    def format_field(self, value: Any, format_spec: str) -> Any:
        _refuse_wide_spec(format_spec)
        return super().format_field(value, format_spec)


# String methods whose first argument is the width of what they build.
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _joined_size(items: list[Any], separator: Any) -> int:
    return sum(len(str(x)) for x in items) + len(str(separator)) * max(len(items) - 1, 0)


def _replaced_size(text: str, old: str, new: str, count: Any) -> int:
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * (len(new) - len(old))


@pass_eval_context
def _join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
    items = list(value)
    if attribute is None:
        _refuse_longer_than_message(_joined_size(items, d), "This join")
    result = jinja_filters.sync_do_join(eval_ctx, items, d, attribute)
    _refuse_longer_than_message(len(result), "This join")
    return result


@pass_eval_context
def _replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> str:
    _refuse_longer_than_message(_replaced_size(str(s), str(old), str(new), count), "This replace")
    return jinja_filters.do_replace(eval_ctx, s, old, new, count)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    _refuse_wide_percent(str(value))
    return jinja_filters.do_format(value, *args, **kwargs)


def _center(value: Any, width: int = 80) -> str:
    if _too_wide(width):
        raise SecurityError(f"center() to more than {MAX_RENDERED_CHARS} characters is refused.")
    return jinja_filters.do_center(value, width)


def _indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> str:
    pad = width if isinstance(width, str) else " " * width if isinstance(width, int) and not _too_wide(width) else None
    if pad is None:
        raise SecurityError(f"indent() by more than {MAX_RENDERED_CHARS} characters is refused.")
    _refuse_longer_than_message(len(str(s)) + len(pad) * (str(s).count("\n") + 1), "This indent")
    return jinja_filters.do_indent(s, width, first, blank)


@pass_environment
def _wordwrap(
    environment: Any,
    s: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    if _too_wide(width):
        raise SecurityError(f"wordwrap() to more than {MAX_RENDERED_CHARS} characters is refused.")
    text = str(s)
    breaks = len(text) // max(width, 1) + text.count("\n") + 1 if isinstance(width, int) else 1
    _refuse_longer_than_message(
        len(text) + len(wrapstring if wrapstring is not None else environment.newline_sequence) * breaks,
        "This wordwrap",
    )
    return jinja_filters.do_wordwrap(environment, s, width, break_long_words, wrapstring, break_on_hyphens)


@pass_environment
def _truncate(
    environment: Any, s: Any, length: int = 255, killwords: bool = False, end: str = "...", leeway: Any = None
) -> str:
    if _too_wide(length) or _too_wide(leeway):
        raise SecurityError(f"truncate() to more than {MAX_RENDERED_CHARS} characters is refused.")
    return jinja_filters.do_truncate(environment, s, length, killwords, end, leeway)


_BOUNDED_FILTERS = {
    "format": _format,
    "center": _center,
    "indent": _indent,
    "wordwrap": _wordwrap,
    "truncate": _truncate,
    "join": _join,
    "replace": _replace,
}


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code for `a ~ b`, with the parts' total size checked before they are joined."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"{func_name}(environment.bounded_parts((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _BoundedCodeGenerator

    @staticmethod
    def bounded_parts(parts: tuple[Any, ...]) -> tuple[Any, ...]:
        _refuse_longer_than_message(sum(len(p) if isinstance(p, str) else len(str(p)) for p in parts), "This ~")
        return parts

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "+":
            sizes = (_size(left), _size(right))
            if None not in sizes:
                _refuse_longer_than_message(sum(sizes), "This +")
            return operator.add(left, right)
        if operator_ == "%":
            if isinstance(left, str):
                _refuse_wide_percent(left)
            return operator.mod(left, right)
        if operator_ == "*":
            for seq, times in ((left, right), (right, left)):
                size = _size(seq)
                if size is not None and isinstance(times, int) and size * max(times, 0) > MAX_RENDERED_CHARS:
                    raise SecurityError(f"A repetition longer than {MAX_RENDERED_CHARS} is refused.")
            if _int_bits(left) + _int_bits(right) > MAX_INT_BITS:
                raise SecurityError("A product that large is refused.")
            return operator.mul(left, right)
        # `**`: integers grow by the exponent; floats and decimals overflow on their own.
        big = isinstance(left, int) and isinstance(right, int) and abs(left) > 1
        if big and right > 0 and max(_int_bits(left), 1) * right > MAX_INT_BITS:
            raise SecurityError("A power that large is refused.")
        return operator.pow(left, right)

    def wrap_str_format(self, value: Any) -> Any:
        """`str.format` and `format_map` as the sandbox makes them, with each field's width and
        precision bounded before it is formatted."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        f_self = value.__self__
        formatter: SandboxedFormatter
        if isinstance(f_self, Markup):
            formatter = _BoundedEscapeFormatter(self, escape=f_self.escape)
        else:
            formatter = _BoundedFormatter(self)
        is_format_map = value.__name__ == "format_map"

        def bounded(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            return type(f_self)(formatter.vformat(f_self, args, kwargs))

        return bounded

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            if name in _PADDING_METHODS and args and _too_wide(args[0]):
                raise SecurityError(f"{name}() to more than {MAX_RENDERED_CHARS} characters is refused.")
            if name == "expandtabs":
                tab = args[0] if args else kwargs.get("tabsize", 8)
                if isinstance(tab, int):
                    _refuse_longer_than_message(len(owner) + owner.count("\t") * tab, "This expandtabs")
            if name == "join" and args:
                items = list(args[0])
                _refuse_longer_than_message(_joined_size(items, owner), "This join")
                args = (items, *args[1:])
            if name == "replace" and len(args) >= 2:
                count = args[2] if len(args) > 2 else kwargs.get("count")
                _refuse_longer_than_message(_replaced_size(owner, str(args[0]), str(args[1]), count), "This replace")
        return super().call(__context, __obj, *args, **kwargs)


def _sandbox(*, autoescape: bool) -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=False)
    env.globals["range"] = _bounded_range
    env.filters.update(_BOUNDED_FILTERS)
    return env


_plain = _sandbox(autoescape=False)
_html = _sandbox(autoescape=True)


def _env(field_name: str) -> _Sandbox:
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
        return [Problem("defaults", None, gettext("An object of variable name -> text."))]
    for name, value in defaults.items():
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            problems.append(
                Problem("defaults", None, gettext("The default of %(name)r must be text or a number.") % {"name": name})
            )
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
                    Problem(
                        field_name,
                        line,
                        gettext("Unknown variable %(var)r and no default for it (known: %(known)s).")
                        % {"var": var, "known": known},
                    )
                )
            elif var == "link" and not url:
                problems.append(
                    Problem(field_name, line, gettext("{{ link }} needs the version's URL (where the link leads)."))
                )
    if problems:
        return problems
    compiled = compile_templates(channel=channel, fields=fields, defaults=defaults, url=url)
    try:
        sample = render(compiled, sample_context(), check_limits=False)
    except RenderError as exc:
        return [Problem("template", None, gettext("Does not render with sample values: %(error)s") % {"error": exc})]
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
        text = _render_field(field_name, template, values)
        # A line break in a subject or title (a name with a newline) would break the e-mail's
        # headers; it reads as a space.
        out[field_name] = _LINE_BREAKS.sub(" ", text).strip() if field_name == "title" else text
    if check_limits and (problems := limit_problems(compiled.channel, out)):
        raise RenderError("LIMIT: " + "; ".join(f"{f}: {r}" for f, r in problems))
    return out


_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")


def _render_field(field_name: str, template: Any, values: dict[str, Any]) -> str:
    """One field's text, stopped past MAX_RENDERED_CHARS. Whatever the template raises (the
    sandbox, a missing trait, KeyError or IndexError of a method, recursion, memory) is this
    person's RenderError: the caller fails one message, never a batch or a request."""
    token = _steps_left.set([MAX_LOOP_STEPS])
    try:
        parts: list[str] = []
        length = 0
        for part in template.generate(values):
            length += len(part)
            if length > MAX_RENDERED_CHARS:
                raise RenderError(f"TOO_LONG: {field_name} renders to more than {MAX_RENDERED_CHARS} characters")
            parts.append(part)
        return "".join(parts)
    except RenderError:
        raise
    except Exception as exc:  # operator-written code: every error is the message's
        raise RenderError(f"{exc.__class__.__name__}: {exc}"[:400]) from exc
    finally:
        _steps_left.reset(token)


def limit_problems(channel: str, rendered: dict[str, str]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    title, body = rendered.get("title", ""), rendered.get("body", "")
    if channel == "push":
        if len(title) > push_title_max():
            problems.append(
                (
                    "title",
                    gettext("The push title is %(n)d characters; at most %(max)d.")
                    % {"n": len(title), "max": push_title_max()},
                )
            )
        if len(body) > push_body_max():
            problems.append(
                (
                    "body",
                    gettext("The push body is %(n)d characters; at most %(max)d.")
                    % {"n": len(body), "max": push_body_max()},
                )
            )
        if not body.strip():
            problems.append(("body", gettext("A push needs a body.")))
    elif channel == "sms":
        size = sms_size(body)
        if size.segments > sms_max_segments():
            problems.append(
                (
                    "body",
                    gettext(
                        "The SMS is %(units)d %(encoding)s characters, %(segments)d segments; at most "
                        "%(max)d (GSM-7: 160 in one, 153 per segment; UCS-2: 70 and 67)."
                    )
                    % {
                        "units": size.units,
                        "encoding": size.encoding,
                        "segments": size.segments,
                        "max": sms_max_segments(),
                    },
                )
            )
        if not body.strip():
            problems.append(("body", gettext("An SMS needs text.")))
    elif channel == "email":
        if len(title) > email_subject_max():
            problems.append(
                (
                    "title",
                    gettext("The subject is %(n)d characters; at most %(max)d.")
                    % {"n": len(title), "max": email_subject_max()},
                )
            )
        if not title.strip():
            problems.append(("title", gettext("An e-mail needs a subject.")))
        if not body.strip() and not rendered.get("html", "").strip():
            problems.append(("body", gettext("An e-mail needs a text or an HTML body.")))
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
    # A copy each time: the samples are shared by every check in the process.
    return copy.deepcopy({name: sample for name, (_description, sample) in VARIABLES.items()})
