"""Reads of the event-only indicators: daily series, cohorts, searches, key behaviours and churn
from the rollups, and funnels computed from the events over an operator's window.

People are person keys, as in `indicators.rollups`: the product's `user_id`, else `anonymous_id`.
Days are UTC days. A person's signup day is their first day of activity (any event); the
`purchase` basis of cohorts uses their first day with an `order_paid` instead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.db import connections, transaction
from django.utils.translation import gettext_lazy as _
from scipy import stats

from config.replica import analytics_alias
from indicators import registry as indicators
from indicators.models import SAMPLE_BUCKETS, CohortGranularity, DailyIndicator, Funnel
from indicators.registry import Fold, Indicator, Unit

PERSON = "COALESCE(e.user_id, e.anonymous_id)"


def _utc(day_sql: str) -> str:
    """A SQL date expression as the timestamp of that UTC midnight."""
    return f"(({day_sql})::timestamp AT TIME ZONE 'UTC')"


# --- daily series (the registry) ------------------------------------------------------------------


def _column(column: str):
    def daily(start: date, end: date) -> dict[date, Decimal]:
        rows = DailyIndicator.objects.filter(day__range=(start, end)).values_list("day", column)
        return {day: Decimal(value) for day, value in rows}

    return daily


def _ratio(numerator: str, denominator: str, places: int = 4):
    quantum = Decimal(1).scaleb(-places)

    def daily(start: date, end: date) -> dict[date, Decimal]:
        rows = DailyIndicator.objects.filter(day__range=(start, end)).values_list("day", numerator, denominator)
        return {day: (Decimal(n) / Decimal(d)).quantize(quantum) for day, n, d in rows if d}

    return daily


EVENT_INDICATORS = [
    Indicator(
        "dau",
        _("Daily active users"),
        Unit.USERS,
        Fold.MEAN,
        _column("active_users"),
        _("People with any event on the day."),
    ),
    Indicator(
        "wau",
        _("Weekly active users"),
        Unit.USERS,
        Fold.LAST,
        _column("weekly_active_users"),
        _("People with any event in the 7 days ending on the day."),
    ),
    Indicator(
        "mau",
        _("Monthly active users"),
        Unit.USERS,
        Fold.LAST,
        _column("monthly_active_users"),
        _("People with any event in the 30 days ending on the day."),
    ),
    Indicator(
        "stickiness",
        _("Stickiness (DAU/MAU)"),
        Unit.RATIO,
        Fold.MEAN,
        _ratio("active_users", "monthly_active_users"),
        _("The day's active users over the 30-day active users."),
    ),
    Indicator(
        "new_users",
        _("New users"),
        Unit.USERS,
        Fold.SUM,
        _column("new_users"),
        _("People whose first event was on the day."),
    ),
    Indicator("orders", _("Orders"), Unit.COUNT, Fold.SUM, _column("orders"), _("`order_paid` events.")),
    Indicator(
        "revenue",
        _("Revenue"),
        Unit.MONEY,
        Fold.SUM,
        _column("revenue"),
        _("`order_paid` amounts minus `order_refunded` amounts of the day."),
    ),
    Indicator(
        "paying_users",
        _("Paying users"),
        Unit.USERS,
        Fold.MEAN,
        _column("paying_users"),
        _("People with an order on the day."),
    ),
    Indicator(
        "arpu",
        _("ARPU"),
        Unit.MONEY,
        Fold.MEAN,
        _ratio("revenue", "active_users", places=2),
        _("Revenue per active user of the day."),
    ),
    Indicator(
        "repurchase_rate",
        _("Repurchase rate"),
        Unit.RATIO,
        Fold.MEAN,
        _ratio("repeat_buyers", "paying_users"),
        _("Share of the day's paying users who had paid on an earlier day."),
    ),
]


def register_event_indicators() -> None:
    for indicator in EVENT_INDICATORS:
        indicators.register_indicator(indicator)


# --- retention cohorts ----------------------------------------------------------------------------

MAX_PERIODS = {CohortGranularity.DAY: 30, CohortGranularity.WEEK: 26, CohortGranularity.MONTH: 24}


def cohort_start(day: date, granularity: str) -> date:
    if granularity == CohortGranularity.WEEK:
        return day - timedelta(days=day.weekday())
    if granularity == CohortGranularity.MONTH:
        return day.replace(day=1)
    return day


def retention_cohorts(*, granularity: str, basis: str, start: date, end: date, periods: int) -> list[dict]:
    """Cohorts starting from `start` to `end` (each cohort is named by its first day), with their
    size and, for periods 1..`periods`, the people retained and the share of the size (%)."""
    with connections[analytics_alias()].cursor() as cursor:
        cursor.execute(
            """
            SELECT cohort, period, users FROM tracking_retentioncell
            WHERE basis = %s AND granularity = %s AND cohort BETWEEN %s AND %s AND period BETWEEN 0 AND %s
            ORDER BY cohort, period
            """,
            [basis, granularity, cohort_start(start, granularity), end, periods],
        )
        rows = cursor.fetchall()
    table: dict[date, dict[int, int]] = {}
    for cohort, period, users in rows:
        table.setdefault(cohort, {})[period] = users
    out = []
    for cohort, cells in table.items():
        size = cells.get(0, 0)
        out.append(
            {
                "cohort": cohort,
                "size": size,
                "retention": [
                    {
                        "period": period,
                        "users": cells.get(period, 0),
                        "percent": (Decimal(100 * cells.get(period, 0)) / size).quantize(Decimal("0.1"))
                        if size
                        else None,
                    }
                    for period in range(1, periods + 1)
                ],
            }
        )
    return out


# --- searches -------------------------------------------------------------------------------------


def _search_parts(start: date, end: date) -> tuple[str, dict]:
    """The signed (query, searches, zero_results) rows that add up to the window, per calendar
    month it touches: a whole month is its `SearchMonth` row; a partial one is either its days in
    the window or, when the window covers most of it, its month row less the days it leaves out
    (a quarter from the 2nd is three month rows less one day, not 29 days and two months). Both
    counts are sums, so the difference is exact."""
    months, days, left_out = [], [], []
    month = start.replace(day=1)
    while month <= end:
        next_month = (month + timedelta(days=32)).replace(day=1)
        first, last = max(start, month), min(end, next_month - timedelta(days=1))
        every_day = [month + timedelta(days=n) for n in range((next_month - month).days)]
        inside = [day for day in every_day if first <= day <= last]
        outside = [day for day in every_day if not first <= day <= last]
        if len(outside) < len(inside):
            months.append(month)
            left_out += outside
        else:
            days += inside
        month = next_month
    sql = """
        SELECT query, searches, zero_results FROM tracking_searchmonth WHERE month = ANY(%(months)s::date[])
        UNION ALL
        SELECT query, searches, zero_results FROM tracking_searchday WHERE day = ANY(%(days)s::date[])
        UNION ALL
        SELECT query, -searches, -zero_results FROM tracking_searchday WHERE day = ANY(%(left_out)s::date[])
    """
    return sql, {"months": months, "days": days, "left_out": left_out}


def search_report(*, start: date, end: date, zero_results_only: bool = False, limit: int | None = None) -> dict:
    """Queries searched from `start` to `end`, most searched first (or those that found nothing,
    most frequent first), with their searches and zero-result searches (at most `limit`), and the
    window's totals over every query: one pass over the window's rollup rows for both."""
    parts, params = _search_parts(start, end)
    order = "zero_results DESC, searches DESC, query" if zero_results_only else "searches DESC, query"
    sql = f"""
        WITH q AS MATERIALIZED (
            SELECT query, sum(searches)::bigint AS searches, sum(zero_results)::bigint AS zero_results
            FROM ({parts}) p GROUP BY query
            HAVING sum(searches) > 0  -- a query searched only on the days left out nets to nothing
        )
        SELECT * FROM (
            SELECT row_number() OVER (ORDER BY {order}) AS rank, query, searches, zero_results FROM q
            {"WHERE zero_results > 0" if zero_results_only else ""}
            ORDER BY {order} {"LIMIT %(limit)s" if limit is not None else ""}
        ) ranked
        UNION ALL
        SELECT 0, NULL, COALESCE(sum(searches), 0), COALESCE(sum(zero_results), 0) FROM q
        ORDER BY 1
    """
    with connections[analytics_alias()].cursor() as cursor:
        cursor.execute(sql, {**params, "limit": limit})
        (_rank, _all, searches, zero), *rows = cursor.fetchall()
    return {
        "queries": [{"query": q, "searches": int(n), "zero_results": int(z)} for _rank, q, n, z in rows],
        "searches": int(searches),
        "zero_results": int(zero),
        "zero_result_rate": _rate(int(zero), int(searches)),
    }


def _rate(part: int, whole: int, places: int = 4) -> Decimal | None:
    if not whole:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(Decimal(1).scaleb(-places))


# --- purchases ------------------------------------------------------------------------------------


def purchase_summary(*, start: date, end: date) -> dict:
    """Revenue, paying people, ARPU (revenue per active person of the window) and the repurchase
    rate (share of paying people who paid on two days or more of the window)."""
    with connections[analytics_alias()].cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*), count(*) FILTER (WHERE orders > 0), count(*) FILTER (WHERE order_days > 1),
                   COALESCE(sum(paid), 0), COALESCE(sum(refunded), 0), COALESCE(sum(orders), 0)
            FROM (SELECT person_key, sum(orders) AS orders, count(*) FILTER (WHERE orders > 0) AS order_days,
                         sum(paid_amount) AS paid, sum(refunded_amount) AS refunded
                  FROM tracking_activityday WHERE day BETWEEN %s AND %s GROUP BY person_key) per_person
            """,
            [start, end],
        )
        active, paying, repeat, paid, refunded, orders = cursor.fetchone()
    revenue = Decimal(paid) - Decimal(refunded)
    return {
        "active_users": active,
        "paying_users": paying,
        "orders": int(orders),
        "revenue": revenue,
        "arpu": (revenue / active).quantize(Decimal("0.01")) if active else None,
        "arppu": (revenue / paying).quantize(Decimal("0.01")) if paying else None,
        "repurchase_rate": _rate(repeat, paying),
    }


# --- funnels --------------------------------------------------------------------------------------


def funnel_report(*, funnel: Funnel, start: date, end: date) -> dict:
    """People who did the first step from `start` to `end`, and how many of them went on to each
    later step, in order: step n strictly after their step n-1, and within the funnel's window
    of their first step-1 event of the period."""
    steps = list(funnel.steps.order_by("position"))
    counts: list[int] = []
    if steps:
        params: dict = {
            "start": datetime.combine(start, time.min, tzinfo=UTC),
            "end": datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC),
            "window": timedelta(hours=funnel.window_hours),
        }
        ctes = []
        for n, step in enumerate(steps, start=1):
            params[f"name{n}"] = step.event_name
            if n == 1:
                ctes.append(
                    f"s1 AS (SELECT {PERSON} AS person, min(e.timestamp) AS t0, min(e.timestamp) AS t "
                    "FROM tracking_event e WHERE e.name = %(name1)s "
                    "AND e.timestamp >= %(start)s AND e.timestamp < %(end)s "
                    "GROUP BY 1)"
                )
            else:
                ctes.append(
                    f"s{n} AS (SELECT p.person, p.t0, min(e.timestamp) AS t FROM s{n - 1} p "
                    f"JOIN tracking_event e ON {PERSON} = p.person "
                    "AND e.timestamp > p.t AND e.timestamp <= p.t0 + %(window)s "
                    f"WHERE e.name = %(name{n})s AND e.timestamp >= %(start)s AND e.timestamp <= %(end)s + %(window)s "
                    "GROUP BY p.person, p.t0)"
                )
        select = ", ".join(f"(SELECT count(*) FROM s{n})" for n in range(1, len(steps) + 1))
        with connections[analytics_alias()].cursor() as cursor:
            cursor.execute(f"WITH {', '.join(ctes)} SELECT {select}", params)
            counts = list(cursor.fetchone())
    entered = counts[0] if counts else 0
    return {
        "funnel": funnel.pk,
        "name": funnel.name,
        "window_hours": funnel.window_hours,
        "start": start,
        "end": end,
        "steps": [
            {
                "position": step.position,
                "event_name": step.event_name,
                "label": step.label or step.event_name,
                "users": users,
                "conversion_from_first": _rate(users, entered),
                "conversion_from_previous": _rate(users, counts[i - 1]) if i else _rate(users, entered),
            }
            for i, (step, users) in enumerate(zip(steps, counts, strict=True))
        ],
    }


# --- key behaviours -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    test: str
    p_value: float | None


def compare_rates(did: tuple[int, int], did_not: tuple[int, int]) -> Comparison:
    """Retained/total of two groups: Pearson's chi-square on the 2x2 table (no continuity
    correction), Fisher's exact test where an expected count is under 5."""
    table = [[did[0], did[1] - did[0]], [did_not[0], did_not[1] - did_not[0]]]
    if min(did[1], did_not[1]) == 0 or (did[0] + did_not[0]) in (0, did[1] + did_not[1]):
        return Comparison("none", None)
    _chi2, p, _dof, expected = stats.chi2_contingency(table, correction=False)
    if expected.min() < 5:
        return Comparison("fisher_exact", float(stats.fisher_exact(table).pvalue))
    return Comparison("chi_square", float(p))


def key_behaviour(
    *, event_name: str, start: date, end: date, first_days: int = 7, retained_from: int = 7, retained_days: int = 7
) -> dict:
    """Among people whose signup day is from `start` to `end`: those who did `event_name` in
    their first `first_days` days against those who did not, by their retention (any activity on
    days `retained_from` to `retained_from + retained_days - 1` after signup).

    From the rollups only: did it in the first days is their first day of `event_name` (no event
    of theirs comes before signup) before `signup + first_days`."""
    sql = """
    WITH cohort AS (
        SELECT person_key, first_day FROM tracking_activityperson WHERE first_day BETWEEN %(start)s AND %(end)s
    ), did AS (
        SELECT c.person_key FROM cohort c
        JOIN tracking_activityfirstevent f ON f.person_key = c.person_key AND f.name = %(event)s
             AND f.first_day < c.first_day + %(first_days)s
    ), kept AS (
        SELECT DISTINCT c.person_key FROM cohort c
        JOIN tracking_activityday a ON a.person_key = c.person_key
             AND a.day BETWEEN c.first_day + %(retained_from)s AND c.first_day + %(retained_to)s
    )
    SELECT d.person_key IS NOT NULL, count(*), count(k.person_key)
    FROM cohort c LEFT JOIN did d ON d.person_key = c.person_key LEFT JOIN kept k ON k.person_key = c.person_key
    GROUP BY 1
    """
    params = {
        "start": start,
        "end": end,
        "event": event_name,
        "first_days": first_days,
        "retained_from": retained_from,
        "retained_to": retained_from + retained_days - 1,
    }
    with connections[analytics_alias()].cursor() as cursor:
        cursor.execute(sql, params)
        groups = {did: (total, kept) for did, total, kept in cursor.fetchall()}
        cursor.execute("SELECT max(day) FROM tracking_activityday")
        (last_day,) = cursor.fetchone()
    did_total, did_kept = groups.get(True, (0, 0))
    not_total, not_kept = groups.get(False, (0, 0))
    comparison = compare_rates((did_kept, did_total), (not_kept, not_total))
    did_rate, not_rate = _rate(did_kept, did_total), _rate(not_kept, not_total)
    return {
        "event_name": event_name,
        "start": start,
        "end": end,
        "first_days": first_days,
        "retained_from": retained_from,
        "retained_days": retained_days,
        "complete": last_day is not None and end + timedelta(days=retained_from + retained_days - 1) <= last_day,
        "groups": [
            {"group": "did", "users": did_total, "retained": did_kept, "retention_rate": did_rate},
            {"group": "did_not", "users": not_total, "retained": not_kept, "retention_rate": not_rate},
        ],
        "difference": did_rate - not_rate if did_rate is not None and not_rate is not None else None,
        "test": comparison.test,
        "p_value": comparison.p_value,
    }


# --- churn ----------------------------------------------------------------------------------------


# People whose last behaviours the churn page reads by default: each costs an index probe, and
# 2,000 keep a quarter's page well inside 200 ms at ten million events. A share of about 50% in a
# group of 1,000 is then known to about +-3 points (95%); an analyst who needs more asks for a
# larger sample (up to MAX_CHURN_SAMPLE) and waits longer.
CHURN_SAMPLE = 2_000
MAX_CHURN_SAMPLE = 100_000

# People active over the window and churned or retained after it, from the person-days' next days.
_CHURN_GROUPS = """
SELECT COALESCE(sum(users) FILTER (WHERE next_day > %(end)s::date + %(churn_days)s), 0),
       COALESCE(sum(users) FILTER (WHERE next_day <= %(end)s::date + %(churn_days)s), 0)
FROM tracking_activitygap WHERE day BETWEEN %(start)s AND %(end)s AND next_day > %(end)s
"""
# The sample's people (the first `sample` of the window's people by the hash of their key, read
# from the lowest buckets), churned or not, each with the event names of their last `last` events
# of the window: their last days' tails, newest day first (each tail holds at least one event, so
# the last `last` events lie in the last `last` days: a short backward scan of the key per person).
_CHURN_LAST_NAMES = """
WITH groups AS MATERIALIZED (
    SELECT bucket, person_key, NOT bool_or(day > %(end)s) AS churned FROM tracking_activitytail
    WHERE bucket < %(buckets)s AND day BETWEEN %(start)s AND %(end)s::date + %(churn_days)s
    GROUP BY bucket, person_key HAVING bool_or(day <= %(end)s)
    ORDER BY hashtext(person_key), person_key LIMIT %(sample)s
)
SELECT g.churned, ARRAY(
    SELECT u.name FROM (
        SELECT t.day, t.names FROM tracking_activitytail t
        WHERE t.bucket = g.bucket AND t.person_key = g.person_key AND t.day BETWEEN %(start)s AND %(end)s
        ORDER BY t.day DESC LIMIT %(last)s
    ) d CROSS JOIN LATERAL unnest(d.names) WITH ORDINALITY AS u(name, position)
    ORDER BY d.day DESC, u.position LIMIT %(last)s
) FROM groups g
"""


def churn_behaviours(
    *, start: date, end: date, churn_days: int = 30, last_events: int = 3, sample: int = CHURN_SAMPLE
) -> dict:
    """People active from `start` to `end` split into churned (no activity in the `churn_days`
    after `end`) and retained; for each event name, how many in each group had it among their last
    `last_events` events of the window, as a share of the group, with the lift of churned over
    retained. Rows are ordered by how much more often churned people ended on that event.

    From the rollups only. The groups' sizes are the whole population's (`ActivityGap`). The last
    events are read for at most `sample` people of it (a fixed pseudo-random draw: the first by a
    hash of their person key; everyone, and so exact, when the population is that small), from
    their days' tails (`ActivityTail`) in the lowest hash buckets that hold that many people:
    a page costs about the same for a week as for a busy quarter. The shares are of the sampled
    groups."""
    params = {"start": start, "end": end, "churn_days": churn_days, "last": last_events}
    alias = analytics_alias()
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        # A few thousand rows from index ranges: compiling the statement costs more than running it.
        cursor.execute("SET LOCAL jit = off")
        cursor.execute(_CHURN_GROUPS, params)
        churned_total, retained_total = (int(n) for n in cursor.fetchone())
        population = churned_total + retained_total
        wanted = min(sample, population)
        # Buckets that hold a tenth more people than the sample, and one more (the hash spreads
        # people evenly); more when they turn out to hold too few.
        drawn = min(SAMPLE_BUCKETS, -(-SAMPLE_BUCKETS * 11 * wanted // (10 * population)) + 1) if population else 0
        while True:
            cursor.execute(_CHURN_LAST_NAMES, {**params, "buckets": drawn, "sample": sample})
            people = cursor.fetchall()
            if len(people) >= wanted or drawn >= SAMPLE_BUCKETS:
                break
            drawn = min(SAMPLE_BUCKETS, drawn * 2)
        cursor.execute("SELECT max(day) FROM tracking_activityday")
        (last_day,) = cursor.fetchone()
    sampled_churned = sum(1 for churned, _names in people if churned)
    sampled_retained = len(people) - sampled_churned
    # Each person counts once per name, however often it is among their last events.
    by_name = Counter((name, churned) for churned, names in people for name in set(names))
    behaviours = []
    for name in sorted({name for name, _churned in by_name}):
        churned, retained = by_name[(name, True)], by_name[(name, False)]
        churned_share = _rate(churned, sampled_churned)
        retained_share = _rate(retained, sampled_retained)
        lift = None
        if churned_share is not None and retained_share:
            lift = (churned_share / retained_share).quantize(Decimal("0.01"))
        behaviours.append(
            {
                "event_name": name,
                "churned": churned,
                "churned_share": churned_share,
                "retained": retained,
                "retained_share": retained_share,
                "lift": lift,
            }
        )
    behaviours.sort(key=lambda row: (-((row["churned_share"] or 0) - (row["retained_share"] or 0)), row["event_name"]))
    return {
        "start": start,
        "end": end,
        "churn_days": churn_days,
        "last_events": last_events,
        "complete": last_day is not None and end + timedelta(days=churn_days) <= last_day,
        "churned_users": churned_total,
        "retained_users": retained_total,
        "sampled_users": sampled_churned + sampled_retained,
        "behaviours": behaviours,
    }
