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
Past those cases, every render has one budget: steps (loops over anything, and each call,
operator, attribute read and filter the sandbox sees), a deadline (OPSLOOP_RENDER_SECONDS), and
the characters all its `{{ }}` produce; each intermediate text or container it sees is sized.
A template someone has just written is checked (save, approval, preview) in a forked child with
limited address space and CPU (about 40 ms a check), so whatever still slips through costs that
child, not a web worker; sends render in-process under the budget.
Any error a template raises fails that person's message (RenderError), never the caller. A
variable the person has no value for takes the version's default for it; without a default that
person's message fails with the reason (and only that one). Channel limits (push title length,
SMS segments by encoding, a JSON object for webhooks) are checked when a version is saved, when
it is approved and on every rendered message.

Jinja2: https://jinja.palletsprojects.com/en/stable/sandbox/
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import json
import math
import multiprocessing
import operator
import re
import resource
import time
import types
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


def render_seconds() -> float:
    return float(getattr(settings, "OPSLOOP_RENDER_SECONDS", RENDER_SECONDS))


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


# Every render runs under one budget: steps (loop iterations and the calls, operators and
# attribute reads the sandbox intercepts), a deadline, and the characters its `{{ }}` produce in
# all (block sets and macros included). Whatever a case-by-case check misses stops here.
MAX_OPERATIONS = 200_000
MAX_PRODUCED_CHARS = 20 * MAX_RENDERED_CHARS
RENDER_SECONDS = 1.0


class _Budget:
    __slots__ = ("deadline", "loop_steps", "operations", "produced", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.loop_steps = MAX_LOOP_STEPS
        self.operations = MAX_OPERATIONS
        self.deadline = time.monotonic() + seconds
        self.produced = 0


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("material_render_budget", default=None)


def _tick(cost: int = 1) -> None:
    budget = _budget.get()
    if budget is None:
        return
    budget.operations -= cost
    if budget.operations < 0:
        raise SecurityError(f"The template takes more than {MAX_OPERATIONS} steps.")
    if time.monotonic() > budget.deadline:
        raise SecurityError(f"The template takes longer than {budget.seconds:g} s to render.")


def _loop_step() -> None:
    budget = _budget.get()
    if budget is None:
        return
    budget.loop_steps -= 1
    if budget.loop_steps < 0:
        raise SecurityError(f"The loops take more than {MAX_LOOP_STEPS} steps in all.")
    _tick()


def _weight(value: Any, limit: int = MAX_RENDERED_CHARS) -> int:
    """About how many characters `value` makes as text (str(), tojson, %s), counting a string
    held many times as many times; stops counting once past `limit`."""
    total = 0
    stack = [value]
    seen = 0
    while stack and total <= limit:
        item = stack.pop()
        seen += 1
        if seen % 1000 == 0:
            _tick(10)
        if isinstance(item, str | bytes | bytearray):
            total += len(item) + 2
        elif isinstance(item, dict):
            total += 2 + 2 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            stack.extend(item)
        else:
            total += 8
    return total


def _refuse_heavy(value: Any, what: str) -> Any:
    if _weight(value) > MAX_RENDERED_CHARS:
        raise SecurityError(f"{what} is refused: it holds more than {MAX_RENDERED_CHARS} characters.")
    return value


class _BudgetedIter:
    """Any iterable a loop or a filter walks, each step charged to the message's budget."""

    def __init__(self, iterable: Any) -> None:
        self._iterable = iterable

    def __len__(self) -> int:
        return len(self._iterable)

    def __iter__(self) -> Any:
        for value in self._iterable:
            _loop_step()
            yield value


def _bounded_iter(value: Any) -> Any:
    return value if isinstance(value, _BoundedRange) else _BudgetedIter(value)


class _BoundedRange:
    """A `range` whose steps count against the message's budget, so nested loops stay small."""

    def __init__(self, rng: range) -> None:
        self._rng = rng

    def __len__(self) -> int:
        return len(self._rng)

    def __getitem__(self, index: Any) -> Any:
        return self._rng[index]

    def __iter__(self) -> Any:
        for value in self._rng:
            _loop_step()
            yield value


def _bounded_range(*args: int) -> _BoundedRange:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise SecurityError(f"range() makes at most {MAX_RANGE} numbers.")
    return _BoundedRange(rng)


def _size(value: Any) -> int | None:
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    return _weight(value) if isinstance(value, list | tuple | dict) else None


def _int_bits(value: Any) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


def _too_wide(number: Any) -> bool:
    return isinstance(number, int | float | Decimal) and not isinstance(number, bool) and number > MAX_RENDERED_CHARS


def _whole(number: Any, what: str) -> int:
    if not isinstance(number, int) or isinstance(number, bool):
        raise SecurityError(f"{what} must be a whole number.")
    return number


def _refuse_wide_spec(spec: str) -> None:
    """A format specification (`>999999999`, `.999999f`, `%999999s`) whose width or precision
    would build a string longer than a whole message."""
    for digits in re.findall(r"\d+", spec):
        stripped = digits.lstrip("0")
        if len(stripped) > len(str(MAX_RENDERED_CHARS)) or (stripped and int(stripped) > MAX_RENDERED_CHARS):
            raise SecurityError(f"A format width or precision past {MAX_RENDERED_CHARS} is refused ({spec!r}).")


# One conversion of printf-style formatting: `%(key)-08.3f`, `%*d`, `%%`.
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?([#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?)[hlL]?[a-zA-Z%]")
_PERCENT_KEYED = re.compile(r"%\(([^)]*)\)")


def _percent_size(template: str, args: Any) -> int:
    """What `template % args` may make: the template, plus each argument as text as often as
    the template names it (a key named 16000 times counts 16000 times)."""
    keys = _PERCENT_KEYED.findall(template)
    if keys and isinstance(args, dict):
        return len(template) + sum(_weight(args.get(key), MAX_RENDERED_CHARS) for key in keys)
    if isinstance(args, tuple):
        return len(template) + _weight(args)
    conversions = len(_PERCENT_SPEC.findall(template))
    return len(template) + max(conversions, 1) * _weight(args)


def _refuse_wide_percent(template: str) -> None:
    for spec in _PERCENT_SPEC.findall(template):
        if "*" in spec:
            raise SecurityError("A width or precision taken from the arguments (`*`) is refused.")
        _refuse_wide_spec(spec)


def _refuse_longer_than_message(size: int, what: str) -> None:
    if size > MAX_RENDERED_CHARS:
        raise SecurityError(f"{what} is refused: it would make more than {MAX_RENDERED_CHARS} characters.")


class _SizedFields:
    """`str.format` fields bounded one by one and in all: `("{0}" * 30000).format(s)` stops at
    the field that takes the result past a message, not after building it."""

    _made = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        _refuse_wide_spec(format_spec)
        _tick()
        self._made += _weight(value) if not format_spec else len(str(format_spec)) + _weight(value)
        _refuse_longer_than_message(self._made, "This format")
        return super().format_field(value, format_spec)  # type: ignore[misc]


class _BoundedFormatter(_SizedFields, SandboxedFormatter):
    pass


class _BoundedEscapeFormatter(_SizedFields, SandboxedEscapeFormatter):
    pass


# String methods whose first argument is the width of what they build.
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _joined_size(items: list[Any], separator: Any) -> int:
    return sum(len(str(x)) for x in items) + len(str(separator)) * max(len(items) - 1, 0)


def _joined_size_bounded(items: list[Any], separator: Any) -> int:
    return sum(_weight(x) for x in items) + len(str(separator)) * max(len(items) - 1, 0)


def _replaced_size(text: str, old: str, new: str, count: Any) -> int:
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * (len(new) - len(old))


@pass_eval_context
def _join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
    items = list(value)
    if attribute is not None:
        # The attribute's values are what is joined: size those, not the items holding them.
        getter = jinja_filters.make_attrgetter(eval_ctx.environment, attribute)
        items = [getter(item) for item in items]
    _refuse_longer_than_message(_joined_size_bounded(items, d), "This join")
    result = jinja_filters.sync_do_join(eval_ctx, items, d)
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


def _line_count(text: str) -> int:
    # splitlines() breaks on \r, \u2028 and the rest too, so counting "\n" alone is short.
    return len(text.splitlines()) + 1


def _indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> str:
    if not isinstance(width, str):
        width = _whole(width, "indent()'s width")
    pad = width if isinstance(width, str) else " " * width if not _too_wide(width) else None
    if pad is None:
        raise SecurityError(f"indent() by more than {MAX_RENDERED_CHARS} characters is refused.")
    _refuse_longer_than_message(len(str(s)) + len(pad) * (_line_count(str(s)) + 1), "This indent")
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
    width = _whole(width, "wordwrap()'s width")
    if _too_wide(width):
        raise SecurityError(f"wordwrap() to more than {MAX_RENDERED_CHARS} characters is refused.")
    text = str(s)
    breaks = len(text) // max(width, 1) + _line_count(text) + 1
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


def _batch(value: Any, linecount: Any, fill_with: Any = None) -> Any:
    # `[1]|batch(10**9, 0)` would pad one batch to a billion items.
    if _too_wide(_whole(linecount, "batch()'s size")):
        raise SecurityError(f"batch() of more than {MAX_RENDERED_CHARS} items is refused.")
    return jinja_filters.do_batch(value, linecount, fill_with)


def _slice(value: Any, slices: Any, fill_with: Any = None) -> Any:
    if _too_wide(_whole(slices, "slice()'s count")):
        raise SecurityError(f"slice() into more than {MAX_RENDERED_CHARS} parts is refused.")
    return jinja_filters.sync_do_slice(value, slices, fill_with)


_BOUNDED_FILTERS = {
    "batch": _batch,
    "slice": _slice,
    "format": _format,
    "center": _center,
    "indent": _indent,
    "wordwrap": _wordwrap,
    "truncate": _truncate,
    "join": _join,
    "replace": _replace,
}


# Filters that make text of a whole value: the value is sized before it is turned into text.
_TEXT_FILTERS = frozenset({"string", "pprint", "tojson", "urlencode", "xmlattr", "e", "escape", "forceescape"})


def _checked(result: Any, what: str) -> Any:
    """Every intermediate value the sandbox sees: text or a container past a message is refused,
    and a generator is walked step by step against the budget."""
    if isinstance(result, str | bytes | bytearray):
        _refuse_longer_than_message(len(result), what)
    elif isinstance(result, list | tuple | dict | set | frozenset):
        _refuse_heavy(result, what)
    elif isinstance(result, types.GeneratorType):
        return _BudgetedIter(result)
    return result


def _charged(name: str, func: Any) -> Any:
    makes_text = name in _TEXT_FILTERS
    passes = getattr(func, "jinja_pass_arg", None) is not None

    @functools.wraps(func)
    def charged(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if makes_text:
            value = args[1] if passes and len(args) > 1 else args[0] if args else None
            _refuse_heavy(value, f"|{name}")
        return _checked(func(*args, **kwargs), f"|{name}")

    return charged


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
        _tick()
        _refuse_longer_than_message(sum(len(p) if isinstance(p, str) else _weight(p) for p in parts), "This ~")
        return parts

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # Every loop walks its iterable through the budget, not only loops over range().
        ast = super()._parse(source, name, filename)
        for loop in ast.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "_budgeted", [], [], None, None, lineno=loop.lineno)
        return ast

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        _tick()
        return _checked(self._binop(operator_, left, right), f"This {operator_}")

    def _binop(self, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "+":
            sizes = (_size(left), _size(right))
            if None not in sizes:
                _refuse_longer_than_message(sum(sizes), "This +")
            return operator.add(left, right)
        if operator_ == "%":
            if isinstance(left, str | bytes):
                text = left if isinstance(left, str) else left.decode("latin-1")
                _refuse_wide_percent(text)
                _refuse_longer_than_message(_percent_size(text, right), "This %")
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
        _tick()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str | bytes | bytearray):
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
                old, new = (a.decode("latin-1") if isinstance(a, bytes | bytearray) else str(a) for a in args[:2])
                text = owner if isinstance(owner, str) else owner.decode("latin-1")
                _refuse_longer_than_message(_replaced_size(text, old, new, count), "This replace")
            if name == "translate" and args:
                # Each character may become a whole string of the table.
                _refuse_longer_than_message(len(owner) * max(_weight(args[0]), 1), "This translate")
        return _checked(super().call(__context, __obj, *args, **kwargs), "This call")


def _finalize(value: Any) -> Any:
    """Each `{{ }}`'s value, sized before it becomes text, and counted against what one render
    may produce in all (a block set or a macro doubling a string in a loop)."""
    size = len(value) if isinstance(value, str) else _weight(value)
    _refuse_longer_than_message(size, "This value")
    budget = _budget.get()
    if budget is not None:
        budget.produced += size
        if budget.produced > MAX_PRODUCED_CHARS:
            raise SecurityError(f"The template produces more than {MAX_PRODUCED_CHARS} characters in all.")
    return value


def _sandbox(*, autoescape: bool) -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=False, finalize=_finalize)
    # lipsum(10**8) and friends: nothing a message needs.
    for name in ("lipsum", "cycler", "joiner"):
        env.globals.pop(name, None)
    env.globals["range"] = _bounded_range
    env.filters.update(_BOUNDED_FILTERS)
    env.filters = {name: _charged(name, func) for name, func in env.filters.items()}
    env.filters["_budgeted"] = _bounded_iter
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


# A render of a template someone has just written (save, approval, preview) runs in a child
# process under these limits, so a case the sandbox misses costs that child, never a web worker.
CHILD_MEMORY_BYTES = 512 * 1024 * 1024
CHILD_CPU_SECONDS = 2
CHILD_WAIT_SECONDS = 10.0


class _ChildFailed(Exception):
    pass


def _address_space() -> int:
    # The limit is on top of what the forked child already maps (the interpreter, Django).
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def _child_main(conn: Any, func: Any, kwargs: dict[str, Any]) -> None:
    try:
        memory = _address_space() + CHILD_MEMORY_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (CHILD_CPU_SECONDS, CHILD_CPU_SECONDS + 1))
        conn.send(("ok", func(**kwargs)))
    except BaseException as exc:  # whatever happens is the parent's answer
        # With the memory gone even this may fail: the parent then sees the child die.
        with contextlib.suppress(BaseException):
            reason = str(exc) if isinstance(exc, RenderError) else f"{exc.__class__.__name__}: {exc}"
            conn.send(("error", reason[:400]))
    finally:
        conn.close()


def in_child(func: Any, **kwargs: Any) -> Any:
    """`func(**kwargs)` in a forked child limited to CHILD_MEMORY_BYTES more memory and
    CHILD_CPU_SECONDS of CPU; _ChildFailed with the reason when it runs past them or dies."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child_main, args=(child, func, kwargs), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(CHILD_WAIT_SECONDS):
            raise _ChildFailed(gettext("The template takes too long to render."))
        try:
            status, value = parent.recv()
        except EOFError as exc:
            raise _ChildFailed(gettext("The template takes too much memory or time to render.")) from exc
    finally:
        parent.close()
        if process.is_alive():
            process.kill()
        process.join()
    if status == "error":
        raise _ChildFailed(value)
    return value


def template_problems(
    *, channel: str, fields: dict[str, str], defaults: dict[str, Any], url: str = ""
) -> list[Problem]:
    """Every reason these templates cannot be saved (see `checked_problems`), worked out in a
    child process with bounded memory and CPU."""
    try:
        return in_child(checked_problems, channel=channel, fields=fields, defaults=defaults, url=url)
    except _ChildFailed as exc:
        return [Problem("template", None, gettext("Does not render with sample values: %(error)s") % {"error": exc})]


def render_in_child(compiled: Compiled, context: dict[str, Any], *, check_limits: bool = True) -> dict[str, str]:
    """`render` in a bounded child process: for previews of a template as written."""
    try:
        return in_child(render, compiled=compiled, context=context, check_limits=check_limits)
    except _ChildFailed as exc:
        raise RenderError(str(exc)) from exc


def checked_problems(*, channel: str, fields: dict[str, str], defaults: dict[str, Any], url: str = "") -> list[Problem]:
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
    token = _budget.set(_Budget(render_seconds()))
    try:
        texts = {name: _render_field(name, template, values) for name, template in compiled.templates.items()}
    finally:
        _budget.reset(token)
    for field_name, text in texts.items():
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
