"""The reads the indicator pages need from events, as one interface with an implementation per
engine: PostgreSQL (`postgres`, the default: the rollup tables folded from `tracking_event`) and
ClickHouse (`clickhouse`: the same answers computed over the raw events shipped there).

Each method returns the rows an analysis is made of; `indicators.analyses` turns them into the
reports (percentages, tests, ordering), so both engines share that arithmetic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

# The columns of a day of `daily_rows`, as the indicator registry names them.
DAILY_COLUMNS = (
    "events",
    "active_users",
    "weekly_active_users",
    "monthly_active_users",
    "new_users",
    "orders",
    "refunds",
    "paid_amount",
    "refunded_amount",
    "revenue",
    "paying_users",
    "repeat_buyers",
)


@dataclass(frozen=True)
class SearchTotals:
    queries: list[tuple[str, int, int]]  # (query, searches, zero_results), in the report's order
    searches: int
    zero_results: int


@dataclass(frozen=True)
class PurchaseTotals:
    active: int
    paying: int
    repeat: int  # paying on two days or more of the window
    paid: Decimal
    refunded: Decimal
    orders: int


@dataclass(frozen=True)
class ChurnRows:
    churned_total: int
    retained_total: int
    people: list[tuple[bool, list[str]]]  # the sample: churned or not, their last event names


@dataclass(frozen=True)
class SourceWindow:
    """One traffic source's events in one window of `source_windows`."""

    source: str  # the events' `utm_source`, '(direct)' where they have none
    window: int  # the window's position in the windows asked for, from 0
    events: int
    people: int
    orders: int  # `order_paid` events
    revenue: Decimal  # their `amount`s matching `STORED_AMOUNT_PATTERN`, each rounded to cents; others count 0


class KeyActivity(NamedTuple):
    """What `key_activity` found for one pair of `user_id` and `anonymous_id` (as events carry
    them): the reports above resolve the pair to a person through the identity mapping. (A named
    tuple: a report builds tens of thousands.)"""

    user_id: str | None
    anonymous_id: str | None
    first: tuple[datetime, int, str] | None  # the earliest event up to `first_until`: (timestamp, id, utm_source)
    orders: list[tuple[datetime, int, Decimal]]  # each `order_paid`: (timestamp, id, amount rounded to cents)
    days: set[date]  # the UTC days of `days_from` to before `days_until` with an event


class EventsStore(ABC):
    """Reads over events. Days are UTC days; a person is the product's `user_id`, else the
    event's `anonymous_id` (its "person key")."""

    engine: str

    @abstractmethod
    def daily_rows(self, *, start: date, end: date) -> dict[date, dict[str, Decimal]]:
        """Per day from `start` to `end` that has a row, the values of `DAILY_COLUMNS`."""

    @abstractmethod
    def retention_cells(
        self, *, basis: str, granularity: str, first_cohort: date, end: date, periods: int
    ) -> list[tuple[date, int, int]]:
        """(cohort, period, users) of the cohorts from `first_cohort` to `end`, periods 0..`periods`,
        ordered by cohort and period; a cell with no one in it may be left out."""

    @abstractmethod
    def search_totals(self, *, start: date, end: date, zero_results_only: bool, limit: int | None) -> SearchTotals:
        """Queries searched in the window, most searched first (or most zero-result searches
        first), at most `limit`, and the totals over every query."""

    @abstractmethod
    def purchase_totals(self, *, start: date, end: date) -> PurchaseTotals: ...

    @abstractmethod
    def funnel_counts(self, *, steps: list[str], start: datetime, end: datetime, window: timedelta) -> list[int]:
        """People at each step: step 1 from `start` (inclusive) to `end` (exclusive), each later
        step strictly after the previous one and within `window` of the person's first step 1."""

    @abstractmethod
    def key_behaviour_groups(
        self, *, event_name: str, start: date, end: date, first_days: int, retained_from: int, retained_to: int
    ) -> dict[bool, tuple[int, int]]:
        """Signup from `start` to `end`, by whether they did `event_name` before signup +
        `first_days`: (people, people active on signup + `retained_from`..`retained_to`)."""

    @abstractmethod
    def last_activity_day(self) -> date | None: ...

    @abstractmethod
    def churn_rows(self, *, start: date, end: date, churn_days: int, last_events: int, sample: int) -> ChurnRows:
        """The window's people churned (nothing in the `churn_days` after `end`) and retained,
        and for a sample of at most `sample` of them their last `last_events` event names of the
        window, newest first."""

    @abstractmethod
    def source_windows(self, *, windows: Sequence[tuple[datetime, datetime]]) -> list[SourceWindow]:
        """Per traffic source and window (`[start, end)`: an event at a window's end is not in it;
        windows may overlap), the events, people, orders and revenue, in no particular order;
        a source with no event in a window has no row for it."""

    @abstractmethod
    def hourly_event_counts(self, *, start: datetime, end: datetime) -> dict[datetime, int]:
        """Events per UTC hour (the hour's start, aware) from `start` (inclusive) to `end`
        (exclusive); an hour with no events has no entry."""

    @abstractmethod
    def key_activity(
        self,
        *,
        user_ids: Sequence[str],
        anonymous_ids: Sequence[str],
        since: datetime,
        first_until: datetime | None,
        days_from: datetime,
        days_until: datetime,
    ) -> list[KeyActivity]:
        """For the events from `since` on whose `user_id` is one of `user_ids` or whose
        `anonymous_id` is one of `anonymous_ids`, per pair of the two: the earliest up to
        `first_until` (none when it is None), the orders, and the days active in a span.
        `first_until` and the span bound the scan, so a report of old sign-ups reads no more than
        it needs."""
