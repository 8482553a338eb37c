"""Tag rules compiled to SQL, the preference statistics, and the set-based sync of tag members.

A rule tag is one `SELECT profile_id` statement over `profiles_profile` and the
`profiles_profileevent` view; a preference tag is one aggregate query (counts per user and
category) followed by a vectorised chi-square in numpy/scipy. Either result is written back by one
statement that upserts the members, deletes those who no longer qualify and records each change
in `profiles_tagchange`, so nothing loops over profiles in Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.translation import gettext
from scipy import stats

# Known traits a rule may test, with the SQL type of their column.
TRAIT_COLUMNS = {
    "name": "text",
    "gender": "text",
    "region": "text",
    "city": "text",
    "timezone": "text",
    "phone": "text",
    "email": "text",
    "birth_date": "date",
    "signup_at": "timestamptz",
    "first_seen_at": "timestamptz",
    "last_seen_at": "timestamptz",
    "push_opt_in": "boolean",
    "sms_opt_in": "boolean",
    "email_opt_in": "boolean",
}
TRAIT_OPS = ("eq", "ne", "in", "gte", "lte", "contains", "is_set")
EVENT_OPS = {"gte": ">=", "lte": "<=", "eq": "="}
SQL_OPS = {"eq": "=", "ne": "<>", "gte": ">=", "lte": "<="}
EVENT_NAME_RE = re.compile(r"^[a-z0-9_.:\-]{1,64}$")
CUSTOM_TRAIT_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MAX_CONDITIONS = 20


def _condition_error(index: int, message: str) -> ValidationError:
    return ValidationError(
        {"conditions": gettext("Condition %(n)s: %(message)s") % {"n": index + 1, "message": message}}
    )


def _typed_value(column_type: str, value: Any, index: int) -> Any:
    if column_type == "text":
        if not isinstance(value, str):
            raise _condition_error(index, gettext("value must be a string."))
        return value
    if column_type == "boolean":
        if not isinstance(value, bool):
            raise _condition_error(index, gettext("value must be true or false."))
        return value
    if column_type == "date":
        parsed = parse_date(value) if isinstance(value, str) else None
        if parsed is None:
            raise _condition_error(index, gettext("value must be a date YYYY-MM-DD."))
        return parsed
    parsed_dt = parse_datetime(value) if isinstance(value, str) else None
    if parsed_dt is None or parsed_dt.tzinfo is None:
        raise _condition_error(index, gettext("value must be a timestamp with a time zone."))
    return parsed_dt


def _check_trait_condition(cond: dict, index: int) -> None:
    trait, op = cond.get("trait"), cond.get("op", "eq")
    if not isinstance(trait, str) or not (trait in TRAIT_COLUMNS or CUSTOM_TRAIT_RE.match(trait)):
        raise _condition_error(index, gettext("'trait' must name a trait."))
    if op not in TRAIT_OPS:
        raise _condition_error(index, gettext("'op' must be one of %(ops)s.") % {"ops": ", ".join(TRAIT_OPS)})
    if op == "is_set":
        return
    value = cond.get("value")
    column_type = TRAIT_COLUMNS.get(trait)
    if op == "in":
        if not isinstance(value, list) or not value or len(value) > 500:
            raise _condition_error(index, gettext("'in' needs a list of 1-500 values."))
        if column_type:
            for item in value:
                _typed_value(column_type, item, index)
    elif op == "contains":
        if not isinstance(value, str) or not value:
            raise _condition_error(index, gettext("'contains' needs a non-empty string."))
        if column_type and column_type != "text":
            raise _condition_error(index, gettext("'contains' applies to text traits only."))
    else:
        if column_type:
            _typed_value(column_type, value, index)
            if column_type == "boolean" and op in ("gte", "lte"):
                raise _condition_error(index, gettext("true/false traits compare with eq or ne only."))
        elif value is None or isinstance(value, (dict, list)):
            raise _condition_error(index, gettext("value must be a string, number or boolean."))


def _check_event_condition(cond: dict, index: int) -> None:
    if not isinstance(cond.get("event"), str) or not EVENT_NAME_RE.match(cond["event"]):
        raise _condition_error(index, gettext("'event' must be an event name."))
    days, count, op = cond.get("within_days"), cond.get("count"), cond.get("op", "gte")
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650:
        raise _condition_error(index, gettext("'within_days' must be a whole number from 1 to 3650."))
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 1_000_000:
        raise _condition_error(index, gettext("'count' must be a whole number from 0."))
    if op not in EVENT_OPS:
        raise _condition_error(index, gettext("'op' must be gte, lte or eq."))


def validate_conditions(conditions: Any) -> None:
    if not isinstance(conditions, list) or not conditions:
        raise ValidationError({"conditions": gettext("A rule needs a list of at least one condition.")})
    if len(conditions) > MAX_CONDITIONS:
        raise ValidationError({"conditions": gettext("At most %(n)s conditions.") % {"n": MAX_CONDITIONS}})
    for index, cond in enumerate(conditions):
        if not isinstance(cond, dict):
            raise _condition_error(index, gettext("must be an object."))
        if "event" in cond:
            _check_event_condition(cond, index)
        elif "trait" in cond:
            _check_trait_condition(cond, index)
        else:
            raise _condition_error(index, gettext("must test a 'trait' or an 'event'."))


def validate_rule(rule) -> None:
    """Model-level validation of a TagRule (admin forms call it through `full_clean`)."""
    from profiles.models import TagRuleKind

    if rule.kind == TagRuleKind.RULE:
        if not rule.tag_name:
            raise ValidationError({"tag_name": gettext("A rule tag needs the name of the tag it maintains.")})
        validate_conditions(rule.conditions)
    else:
        if not rule.event_name or not EVENT_NAME_RE.match(rule.event_name):
            raise ValidationError({"event_name": gettext("A preference rule needs an event name.")})
        if not rule.category_property:
            raise ValidationError({"category_property": gettext("Name the property that holds the category.")})
        if not 0 < rule.p_value_threshold < 1:
            raise ValidationError({"p_value_threshold": gettext("Must lie strictly between 0 and 1.")})
        if not rule.window_days:
            raise ValidationError({"window_days": gettext("Must be at least one day.")})
        if not rule.min_count:
            raise ValidationError({"min_count": gettext("Must be at least 1.")})


# --- rule tags ------------------------------------------------------------------------------


def compile_rule(conditions: list[dict], *, at: datetime | None = None) -> tuple[str, list[Any]]:
    """One `SELECT profile_id` over live (not merged) profiles matching every condition."""
    validate_conditions(conditions)
    at = at or timezone.now()
    joins: list[str] = []
    wheres = ["p.merged_into_id IS NULL"]
    params_join: list[Any] = []
    params_where: list[Any] = []
    for index, cond in enumerate(conditions):
        if "event" in cond:
            alias = f"e{index}"
            op, count = cond.get("op", "gte"), cond["count"]
            # Zero events satisfy "lte n" and "eq 0": those need the outer join and COALESCE;
            # otherwise a plain join lets the planner start from the (smaller) event side.
            zero_matches = (op == "lte") or (op == "eq" and count == 0)
            join = "LEFT JOIN" if zero_matches else "JOIN"
            joins.append(
                f"{join} (SELECT pe.profile_id, count(*) AS n FROM profiles_profileevent pe "
                f"WHERE pe.name = %s AND pe.timestamp >= %s AND pe.profile_id IS NOT NULL "
                f"GROUP BY pe.profile_id) {alias} ON {alias}.profile_id = p.id"
            )
            params_join += [cond["event"], at - timedelta(days=cond["within_days"])]
            counted = f"COALESCE({alias}.n, 0)" if zero_matches else f"{alias}.n"
            wheres.append(f"{counted} {EVENT_OPS[op]} %s")
            params_where.append(count)
            continue
        trait, op = cond["trait"], cond.get("op", "eq")
        column_type = TRAIT_COLUMNS.get(trait)
        if column_type:
            column = f"p.{trait}"
            if op == "is_set":
                wheres.append({"text": f"{column} <> ''", "boolean": column}.get(column_type, f"{column} IS NOT NULL"))
            elif op == "in":
                wheres.append(f"{column} = ANY(%s::{column_type}[])")
                params_where.append([_typed_value(column_type, v, index) for v in cond["value"]])
            elif op == "contains":
                wheres.append(f"{column} ILIKE %s")
                params_where.append("%" + _escape_like(cond["value"]) + "%")
            else:
                wheres.append(f"{column} {SQL_OPS[op]} %s::{column_type}")
                params_where.append(_typed_value(column_type, cond["value"], index))
        else:
            # Custom traits compare as jsonb, which orders numbers numerically and strings
            # lexically, and never fails on a value of another type.
            value_expr = "p.traits -> %s"
            params_where.append(trait)
            if op == "is_set":
                wheres.append(f"({value_expr}) IS NOT NULL")
            elif op == "in":
                wheres.append(f"({value_expr}) = ANY(ARRAY(SELECT jsonb_array_elements(%s::jsonb)))")
                params_where.append(_json(cond["value"]))
            elif op == "contains":
                wheres.append("(p.traits ->> %s) ILIKE %s")
                params_where.append("%" + _escape_like(cond["value"]) + "%")
            else:
                wheres.append(f"({value_expr}) {SQL_OPS[op]} %s::jsonb")
                params_where.append(_json(cond["value"]))
    sql = f"SELECT p.id AS profile_id FROM profiles_profile p {' '.join(joins)} WHERE {' AND '.join(wheres)}"
    return sql, params_join + params_where


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --- preference tags ------------------------------------------------------------------------


@dataclass(frozen=True)
class Preference:
    profile_id: int
    category: str
    count: int
    expected: float
    p_value: float
    effect_size: float


def category_counts(
    *, event_name: str, category_property: str, since: datetime
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(profile ids, category labels, counts): one row per user and category, one query."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT pe.profile_id, pe.properties ->> %s AS category, count(*)
            FROM profiles_profileevent pe
            WHERE pe.name = %s AND pe.timestamp >= %s AND pe.profile_id IS NOT NULL
              AND pe.properties ->> %s IS NOT NULL AND pe.properties ->> %s <> ''
            GROUP BY 1, 2
            """,
            [category_property, event_name, since, category_property, category_property],
        )
        rows = cursor.fetchall()
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    profile_ids, categories, counts = zip(*rows, strict=True)
    return (
        np.fromiter(profile_ids, dtype=np.int64, count=len(rows)),
        np.array(categories, dtype=object),
        np.fromiter(counts, dtype=np.int64, count=len(rows)),
    )


def preferences(
    profile_ids: np.ndarray,
    categories: np.ndarray,
    counts: np.ndarray,
    *,
    min_count: int,
    p_value_threshold: float,
) -> list[Preference]:
    """Categories each user chose significantly more often than the population does.

    Per user u and category c the test compares the user's counts (in c, not in c) with what the
    population's share of c predicts for the user's total: a chi-square goodness-of-fit test with
    one degree of freedom. The effect size is Cohen's w = sqrt(chi2 / n_u), independent of how
    active the user is, so it ranks "how strongly" rather than "how much data".
    """
    if counts.size == 0:
        return []
    labels, category_index = np.unique(categories.astype(str), return_inverse=True)
    users, user_index = np.unique(profile_ids, return_inverse=True)
    user_totals = np.bincount(user_index, weights=counts).astype(float)
    category_totals = np.bincount(category_index, weights=counts, minlength=len(labels)).astype(float)
    share = category_totals / category_totals.sum()

    n_u = user_totals[user_index]
    observed = np.vstack([counts.astype(float), n_u - counts])
    expected = np.vstack([n_u * share[category_index], n_u * (1 - share[category_index])])
    # A category chosen by everyone (share 1) has nothing to prefer and no valid test.
    testable = (share[category_index] < 1) & (counts >= min_count) & (counts > expected[0])
    if not testable.any():
        return []
    chi2, p_values = stats.chisquare(observed[:, testable], expected[:, testable], axis=0)
    effect = np.sqrt(chi2 / n_u[testable])
    keep = p_values < p_value_threshold
    rows = np.nonzero(testable)[0][keep]
    return [
        Preference(
            profile_id=int(users[user_index[i]]),
            category=str(labels[category_index[i]]),
            count=int(counts[i]),
            expected=float(expected[0, i]),
            p_value=float(p),
            effect_size=float(w),
        )
        for i, p, w in zip(rows, p_values[keep], effect[keep], strict=True)
    ]


# --- writing members back -------------------------------------------------------------------

SYNC_SQL = """
WITH target(profile_id, tag_id, score) AS MATERIALIZED ({target}),
removed AS (
    DELETE FROM profiles_profiletag pt
    WHERE pt.tag_id = ANY(%(tag_ids)s)
      AND NOT EXISTS (SELECT 1 FROM target t WHERE t.profile_id = pt.profile_id AND t.tag_id = pt.tag_id)
    RETURNING pt.profile_id, pt.tag_id
),
upserted AS (
    INSERT INTO profiles_profiletag AS pt (profile_id, tag_id, score, source, computed_at)
    SELECT profile_id, tag_id, score, %(source)s, %(at)s FROM target
    ON CONFLICT (profile_id, tag_id) DO UPDATE
        SET score = EXCLUDED.score, source = EXCLUDED.source, computed_at = EXCLUDED.computed_at
        -- Unchanged members are not rewritten: a nightly run then costs reads, not a million
        -- row versions. The tag's own computed_at says when the rule last ran.
        WHERE pt.score IS DISTINCT FROM EXCLUDED.score OR pt.source <> EXCLUDED.source
    RETURNING pt.profile_id, pt.tag_id, (xmax = 0) AS inserted
),
changes AS (
    INSERT INTO profiles_tagchange (profile_id, tag_id, action, source, at)
    SELECT profile_id, tag_id, 'added', %(source)s, %(at)s FROM upserted WHERE inserted
    UNION ALL
    SELECT profile_id, tag_id, 'removed', %(source)s, %(at)s FROM removed
    RETURNING action
)
SELECT
    (SELECT count(*) FROM changes WHERE action = 'added'),
    (SELECT count(*) FROM changes WHERE action = 'removed'),
    (SELECT count(*) FROM target)
"""


@dataclass(frozen=True)
class SyncResult:
    added: int
    removed: int
    members: int


def sync_members(
    *, target_sql: str, params: list[Any] | dict[str, Any], tag_ids: list[int], source: str, at: datetime
) -> SyncResult:
    """Make the members of `tag_ids` exactly the rows of `target_sql` (profile_id, tag_id, score)."""
    named = {"tag_ids": tag_ids, "source": source, "at": at}
    if isinstance(params, dict):
        named.update(params)
        target = target_sql
    else:
        # Positional %s inside the target become named ones so both kinds can mix.
        pieces = target_sql.split("%s")
        if len(pieces) - 1 != len(params):
            raise ValueError("Parameter count does not match the target statement.")
        target = pieces[0]
        for i, piece in enumerate(pieces[1:]):
            named[f"p{i}"] = params[i]
            target += f"%(p{i})s" + piece
    with connection.cursor() as cursor:
        cursor.execute(SYNC_SQL.format(target=target), named)
        added, removed, members = cursor.fetchone()
    return SyncResult(added=added, removed=removed, members=members)
