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

from django.utils.translation import gettext_lazy as _
from scipy import stats

from indicators import registry as indicators
from indicators.models import CohortGranularity, Funnel
from indicators.registry import Fold, Indicator, Unit
from tracking.events_store import events_store

# --- daily series (the registry) ------------------------------------------------------------------


def _column(column: str):
    def daily(start: date, end: date) -> dict[date, Decimal]:
        rows = events_store().daily_rows(start=start, end=end)
        return {day: Decimal(values[column]) for day, values in rows.items()}

    return daily


def _ratio(numerator: str, denominator: str, places: int = 4):
    quantum = Decimal(1).scaleb(-places)

    def daily(start: date, end: date) -> dict[date, Decimal]:
        rows = events_store().daily_rows(start=start, end=end)
        return {
            day: (Decimal(v[numerator]) / Decimal(v[denominator])).quantize(quantum)
            for day, v in rows.items()
            if v[denominator]
        }

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
    rows = events_store().retention_cells(
        basis=basis, granularity=granularity, first_cohort=cohort_start(start, granularity), end=end, periods=periods
    )
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


def search_report(*, start: date, end: date, zero_results_only: bool = False, limit: int | None = None) -> dict:
    """Queries searched from `start` to `end`, most searched first (or those that found nothing,
    most frequent first), with their searches and zero-result searches (at most `limit`), and the
    window's totals over every query."""
    totals = events_store().search_totals(start=start, end=end, zero_results_only=zero_results_only, limit=limit)
    return {
        "queries": [{"query": q, "searches": n, "zero_results": z} for q, n, z in totals.queries],
        "searches": totals.searches,
        "zero_results": totals.zero_results,
        "zero_result_rate": _rate(totals.zero_results, totals.searches),
    }


def _rate(part: int, whole: int, places: int = 4) -> Decimal | None:
    if not whole:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(Decimal(1).scaleb(-places))


# --- purchases ------------------------------------------------------------------------------------


def purchase_summary(*, start: date, end: date) -> dict:
    """Revenue, paying people, ARPU (revenue per active person of the window) and the repurchase
    rate (share of paying people who paid on two days or more of the window)."""
    totals = events_store().purchase_totals(start=start, end=end)
    active, paying, repeat, orders = totals.active, totals.paying, totals.repeat, totals.orders
    revenue = totals.paid - totals.refunded
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
    counts = events_store().funnel_counts(
        steps=[step.event_name for step in steps],
        start=datetime.combine(start, time.min, tzinfo=UTC),
        end=datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC),
        window=timedelta(hours=funnel.window_hours),
    )
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

    Did it in the first days: their first day of `event_name` (no event of theirs comes before
    signup) is before `signup + first_days`."""
    store = events_store()
    groups = store.key_behaviour_groups(
        event_name=event_name,
        start=start,
        end=end,
        first_days=first_days,
        retained_from=retained_from,
        retained_to=retained_from + retained_days - 1,
    )
    last_day = store.last_activity_day()
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


def churn_behaviours(
    *, start: date, end: date, churn_days: int = 30, last_events: int = 3, sample: int = CHURN_SAMPLE
) -> dict:
    """People active from `start` to `end` split into churned (no activity in the `churn_days`
    after `end`) and retained; for each event name, how many in each group had it among their last
    `last_events` events of the window, as a share of the group, with the lift of churned over
    retained. Rows are ordered by how much more often churned people ended on that event.

    The groups' sizes are the whole population's. The last events are read for at most `sample`
    people of it (a fixed pseudo-random draw: the first by a hash of their person key; everyone,
    and so exact, when the population is that small). The shares are of the sampled groups."""
    store = events_store()
    rows = store.churn_rows(start=start, end=end, churn_days=churn_days, last_events=last_events, sample=sample)
    last_day = store.last_activity_day()
    churned_total, retained_total, people = rows.churned_total, rows.retained_total, rows.people
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
