"""Compile a segment definition (the tree of the API contract) into one parametrised SQL query.

Every user value travels as a query parameter; only names we chose ourselves (columns from a
fixed table below, operators from fixed maps) are written into the SQL text. Validation happens
while compiling, so an unknown field or operator is reported with its place in the tree.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

CONDITION_KEYS = (
    "all",
    "any",
    "not",
    "tag",
    "tier",
    "predicted_tier",
    "lifecycle",
    "rfm_segment",
    "trait",
    "event",
    "uplift",
)
TRAIT_OPS = ("eq", "ne", "in", "gte", "lte", "contains")
EVENT_OPS = ("gte", "lte", "eq")
MAX_DEPTH = 12
MAX_CONDITIONS = 200

# Known traits are profile columns; anything else is looked up in the JSON `traits`.
TRAIT_COLUMNS: dict[str, str] = {
    "name": "text",
    "gender": "text",
    "region": "text",
    "city": "text",
    "timezone": "text",
    "email": "text",
    "phone": "text",
    "birth_date": "date",
    "signup_at": "datetime",
    "first_seen_at": "datetime",
    "last_seen_at": "datetime",
    "push_opt_in": "bool",
    "sms_opt_in": "bool",
    "email_opt_in": "bool",
}


class DefinitionError(ValueError):
    """The definition is invalid; `errors` lists each problem with its place in the tree."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


@dataclass
class Compiled:
    where: str
    params: list[Any] = field(default_factory=list)


@dataclass
class _Compiler:
    now: dt.datetime
    errors: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    count: int = 0

    def fail(self, path: str, message: str) -> str:
        # The top of the tree has no path of its own: name it, rather than start with ": ".
        self.errors.append(f"{path or 'definition'}: {message}")
        return "FALSE"

    def node(self, node: Any, path: str, depth: int = 0) -> str:
        self.count += 1
        if depth > MAX_DEPTH or self.count > MAX_CONDITIONS:
            return self.fail(path, f"definition too large (at most {MAX_DEPTH} levels, {MAX_CONDITIONS} conditions)")
        if not isinstance(node, dict) or not node:
            return self.fail(path, "each condition must be a non-empty object")
        unknown = [key for key in node if key not in CONDITION_KEYS and key not in _EXTRA_KEYS]
        if unknown:
            return self.fail(
                path,
                f"unknown field(s) {', '.join(map(repr, sorted(unknown)))}; a condition is one of "
                f"{', '.join(CONDITION_KEYS)} (with op and value for trait; op, count and within_days for event)",
            )
        kinds = [key for key in node if key in CONDITION_KEYS]
        if len(kinds) != 1:
            return self.fail(path, f"exactly one of {', '.join(CONDITION_KEYS)} expected, got {kinds or 'none'}")
        kind = kinds[0]
        allowed_extra = _ALLOWED_EXTRA[kind]
        stray = [key for key in node if key != kind and key not in allowed_extra]
        if stray:
            allowed = ", ".join(sorted(allowed_extra)) or "nothing else"
            return self.fail(
                path, f"field(s) {', '.join(map(repr, sorted(stray)))} do not apply to '{kind}' (it takes {allowed})"
            )
        return getattr(self, f"c_{kind}")(node, f"{path}.{kind}" if path else kind, depth)

    def c_all(self, node: dict, path: str, depth: int) -> str:
        return self._group(node["all"], path, depth, " AND ", "TRUE")

    def c_any(self, node: dict, path: str, depth: int) -> str:
        return self._group(node["any"], path, depth, " OR ", "FALSE")

    def _group(self, items: Any, path: str, depth: int, joiner: str, empty: str) -> str:
        if not isinstance(items, list):
            return self.fail(path, "must be a list of conditions")
        parts = [self.node(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(items)]
        return "(" + joiner.join(parts) + ")" if parts else empty

    def c_not(self, node: dict, path: str, depth: int) -> str:
        inner = node["not"]
        if not isinstance(inner, dict):
            return self.fail(
                path,
                f"takes one condition, an object with one of {', '.join(CONDITION_KEYS)}"
                " (to negate several, wrap them in all or any)",
            )
        # A condition that is unknown for a person (no such trait: NULL) is not true of them, so
        # its negation is: everyone outside the condition, people without the trait included.
        return f"NOT COALESCE({self.node(inner, path, depth + 1)}, FALSE)"

    def _names(self, value: Any, path: str) -> list[str] | None:
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and v for v in values):
            self.fail(path, "must be a non-empty string or list of non-empty strings")
            return None
        return values

    def c_tag(self, node: dict, path: str, depth: int) -> str:
        names = self._names(node["tag"], path)
        if names is None:
            return "FALSE"
        self.params.append(names)
        return (
            "EXISTS (SELECT 1 FROM profiles_profiletag pt JOIN profiles_tag t ON t.id = pt.tag_id"
            " WHERE pt.profile_id = p.id AND t.name = ANY(%s))"
        )

    def c_tier(self, node: dict, path: str, depth: int) -> str:
        names = self._names(node["tier"], path)
        if names is None:
            return "FALSE"
        self.params.append(names)
        return "cv.tier_id IN (SELECT vt.id FROM crm_valuetier vt WHERE vt.slug = ANY(%s))"

    def c_predicted_tier(self, node: dict, path: str, depth: int) -> str:
        names = self._names(node["predicted_tier"], path)
        if names is None:
            return "FALSE"
        self.params.append(names)
        return (
            "EXISTS (SELECT 1 FROM predictions_prediction pp JOIN predictions_predictedtier ppt"
            " ON ppt.id = pp.tier_id WHERE pp.profile_id = p.id AND ppt.slug = ANY(%s))"
        )

    def _choice(self, node: dict, key: str, path: str, column: str, choices: list[str]) -> str:
        names = self._names(node[key], path)
        if names is None:
            return "FALSE"
        bad = [n for n in names if n not in choices]
        if bad:
            return self.fail(path, f"unknown value(s) {', '.join(map(repr, bad))}; expected {', '.join(choices)}")
        self.params.append(names)
        return f"{column} = ANY(%s)"

    def c_lifecycle(self, node: dict, path: str, depth: int) -> str:
        from crm.models import LifecycleStage

        return self._choice(node, "lifecycle", path, "cv.lifecycle", list(LifecycleStage.values))

    def c_rfm_segment(self, node: dict, path: str, depth: int) -> str:
        from crm.models import RfmSegment

        return self._choice(node, "rfm_segment", path, "cv.segment", list(RfmSegment.values))

    def c_trait(self, node: dict, path: str, depth: int) -> str:
        name, op = node["trait"], node.get("op", "eq")
        if not isinstance(name, str) or not name or len(name) > 100:
            return self.fail(path, "trait must be a non-empty name")
        if op not in TRAIT_OPS:
            return self.fail(
                path.rsplit(".", 1)[0] + ".op", f"unknown operator {op!r}; expected {', '.join(TRAIT_OPS)}"
            )
        if "value" not in node:
            return self.fail(path.rsplit(".", 1)[0] + ".value", "required")
        value = node["value"]
        kind = TRAIT_COLUMNS.get(name)
        if kind is not None:
            return self._column_trait(name, kind, op, value, path)
        return self._json_trait(name, op, value, path)

    def _coerce(self, kind: str, value: Any) -> Any:
        if kind == "text":
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError("must be a string")
            return str(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError("must be true or false")
            return value
        if kind == "date":
            parsed = parse_date(value) if isinstance(value, str) else None
            if parsed is None:
                raise ValueError("must be a date (YYYY-MM-DD)")
            return parsed
        if kind == "datetime":
            parsed = parse_datetime(value) if isinstance(value, str) else None
            if parsed is None or parsed.tzinfo is None:
                raise ValueError("must be an ISO 8601 timestamp with a time zone")
            return parsed
        raise ValueError(kind)

    def _column_trait(self, name: str, kind: str, op: str, value: Any, path: str) -> str:
        col = f"p.{name}"
        value_path = path.rsplit(".", 1)[0] + ".value"
        try:
            if op == "in":
                if not isinstance(value, list) or not value:
                    raise ValueError("must be a non-empty list")
                self.params.append([self._coerce(kind, v) for v in value])
                return f"{col} = ANY(%s)"
            if op == "contains":
                if kind != "text":
                    raise ValueError(f"'contains' applies to text traits, not {name}")
                self.params.append("%" + _like_escape(self._coerce(kind, value)) + "%")
                return f"{col} ILIKE %s"
            if op in ("gte", "lte") and kind == "bool":
                raise ValueError(f"'{op}' does not apply to a true/false trait")
            self.params.append(self._coerce(kind, value))
        except ValueError as exc:
            return self.fail(value_path, str(exc))
        return f"{col} {_SQL_OPS[op]} %s"

    def _json_trait(self, name: str, op: str, value: Any, path: str) -> str:
        value_path = path.rsplit(".", 1)[0] + ".value"
        if op in ("eq", "ne"):
            self.params.extend([name, json.dumps(value)])
            return f"(p.traits -> %s) {'=' if op == 'eq' else 'IS DISTINCT FROM'} %s::jsonb"
        if op == "in":
            if not isinstance(value, list) or not value:
                return self.fail(value_path, "must be a non-empty list")
            self.params.extend([name, [json.dumps(v) for v in value]])
            return "(p.traits -> %s) = ANY(%s::jsonb[])"
        if op == "contains":
            if not isinstance(value, str):
                return self.fail(value_path, "must be a string")
            self.params.extend([name, "%" + _like_escape(value) + "%"])
            return "(p.traits ->> %s) ILIKE %s"
        # gte / lte: numbers compare as numbers, strings (ISO dates, say) as text.
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return self.fail(value_path, "must be a number or a string")
        if isinstance(value, str):
            self.params.extend([name, name, value])
            return f"(jsonb_typeof(p.traits -> %s) = 'string' AND (p.traits ->> %s) {_SQL_OPS[op]} %s)"
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            return self.fail(value_path, "must be a finite number")
        self.params.extend([name, name, number])
        return (
            f"(CASE WHEN jsonb_typeof(p.traits -> %s) = 'number' THEN (p.traits ->> %s)::numeric END) {_SQL_OPS[op]} %s"
        )

    def c_event(self, node: dict, path: str, depth: int) -> str:
        base = path.rsplit(".", 1)[0]
        base = f"{base}." if base != path else ""
        name = node["event"]
        if not isinstance(name, str) or not name or len(name) > 64:
            return self.fail(path, "event must be an event name")
        op = node.get("op", "gte")
        if op not in EVENT_OPS:
            return self.fail(f"{base}op", f"unknown operator {op!r}; expected {', '.join(EVENT_OPS)}")
        count = node.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            return self.fail(f"{base}count", "must be a whole number >= 0")
        days = node.get("within_days", 30)
        # Raw events are kept that long at least (a system check holds retention to it).
        most = settings.OPSLOOP_SEGMENT_MAX_LOOKBACK_DAYS
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= most:
            return self.fail(f"{base}within_days", f"must be a whole number of days from 1 to {most}")
        since = self.now - dt.timedelta(days=days)
        # Set-based: one grouped pass over the window's events (hashed semi-join) instead of a
        # count per profile. An event belongs to the profile of its `user_id` identity, else to
        # that of its `anonymous_id` (as in the profiles_profileevent view); written as two
        # branches so each uses its own event index.
        sub = (
            "SELECT x.pid FROM ("
            " SELECT iu.profile_id AS pid FROM tracking_event e"
            " JOIN profiles_identity iu ON iu.kind = 'user_id' AND iu.value = e.user_id"
            " WHERE e.name = %s AND e.timestamp >= %s"
            " UNION ALL"
            " SELECT ia.profile_id FROM tracking_event e"
            " JOIN profiles_identity ia ON ia.kind = 'anonymous_id' AND ia.value = e.anonymous_id"
            " WHERE e.name = %s AND e.timestamp >= %s AND e.anonymous_id IS NOT NULL AND NOT EXISTS ("
            "  SELECT 1 FROM profiles_identity i2 WHERE i2.kind = 'user_id' AND i2.value = e.user_id)"
            ") x GROUP BY x.pid HAVING count(*) {cmp} %s"
        )
        if op == "gte":
            if count == 0:
                return "TRUE"
            self.params.extend([name, since, name, since, count])
            return f"p.id IN ({sub.format(cmp='>=')})"
        if op == "lte":
            self.params.extend([name, since, name, since, count])
            return f"p.id NOT IN ({sub.format(cmp='>')})"
        if count == 0:
            self.params.extend([name, since, name, since, 1])
            return f"p.id NOT IN ({sub.format(cmp='>=')})"
        self.params.extend([name, since, name, since, count])
        return f"p.id IN ({sub.format(cmp='=')})"

    def c_uplift(self, node: dict, path: str, depth: int) -> str:
        """`{"uplift": <rule id>, "top_percent": N}`: the N % of people with the highest predicted
        uplift for that coupon rule (its last fit, `coupons.services.fit_rule_uplift`)."""
        base = path.rsplit(".", 1)[0]
        base = f"{base}." if base != path else ""
        rule_id = node["uplift"]
        if isinstance(rule_id, bool) or not isinstance(rule_id, int) or not 1 <= rule_id < 2**63:
            return self.fail(path, "must be a coupon rule id")
        top = node.get("top_percent")
        if isinstance(top, bool) or not isinstance(top, int | float) or not 0 < top <= 100:
            return self.fail(f"{base}top_percent", "must be a percent above 0 and at most 100")
        self.params.extend([rule_id, float(top), rule_id])
        return (
            "p.id IN (SELECT u.profile_id FROM coupons_upliftscore u WHERE u.rule_id = %s"
            " ORDER BY u.uplift DESC, u.profile_id"
            " LIMIT (SELECT ceil(count(*) * %s / 100.0) FROM coupons_upliftscore c WHERE c.rule_id = %s))"
        )


_EXTRA_KEYS = {"op", "value", "within_days", "count", "top_percent"}
_ALLOWED_EXTRA = {
    "all": set(),
    "any": set(),
    "not": set(),
    "tag": set(),
    "tier": set(),
    "predicted_tier": set(),
    "lifecycle": set(),
    "rfm_segment": set(),
    "trait": {"op", "value"},
    "event": {"op", "within_days", "count"},
    "uplift": {"top_percent"},
}
_SQL_OPS = {"eq": "=", "ne": "IS DISTINCT FROM", "gte": ">=", "lte": "<="}


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _nul_characters(definition: Any) -> list[str]:
    """PostgreSQL's text and jsonb cannot hold NUL: a definition with one could be neither stored
    nor compared, so it is refused like any other invalid value. A loop, not recursion: the
    definition may be nested deeper than Python recurses."""
    errors, stack = [], [(definition, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str) and "\x00" in node:
            errors.append(f"{path or 'definition'}: text may not contain NUL characters")
        elif isinstance(node, dict):
            for key, value in node.items():
                stack.append((key, path))
                stack.append((value, f"{path}.{key}" if path else str(key)))
        elif isinstance(node, list):
            stack.extend((value, f"{path}[{i}]") for i, value in enumerate(node))
    return sorted(set(errors))


def compile_definition(definition: Any, *, now: dt.datetime | None = None) -> Compiled:
    """The WHERE clause (over `profiles_profile p LEFT JOIN crm_customervalue cv`) and its
    parameters; raises DefinitionError listing every problem found."""
    compiler = _Compiler(now=now or timezone.now())
    where = compiler.node(definition, "")
    compiler.errors.extend(_nul_characters(definition))
    if compiler.errors:
        raise DefinitionError(compiler.errors)
    return Compiled(where=where, params=compiler.params)


def audience_sql(definition: Any, *, now: dt.datetime | None = None) -> tuple[str, list[Any]]:
    """`SELECT p.id AS profile_id, p.user_id ...` for the live members of the segment. Merged
    profiles are left out: their person is reached through the surviving profile."""
    compiled = compile_definition(definition, now=now)
    sql = (
        "SELECT p.id AS profile_id, p.user_id AS user_id FROM profiles_profile p"
        " LEFT JOIN crm_customervalue cv ON cv.profile_id = p.id"
        f" WHERE p.merged_into_id IS NULL AND ({compiled.where})"
    )
    return sql, compiled.params
