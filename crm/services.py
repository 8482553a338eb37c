"""Writes of the customer-value domain: the recompute of RFM scores, tiers, lifecycle stages and
account managers, and the operator actions around it.

The recompute is set-based: a handful of SQL statements over all profiles, whatever their number.

Quintile scores, exactly: among the customers with at least one paid, unrefunded order in the
window, each value gets the SQL `rank()` (1 + the number of customers strictly worse; tied
customers share the rank of the first of them). With `n` customers its percent rank is
`pr = (rank - 1) / (n - 1)` and the score is the fifth of [0, 1] it falls in, right-closed:
[0, .2] -> 1, (.2, .4] -> 2, (.4, .6] -> 3, (.6, .8] -> 4, (.8, 1] -> 5 (a base of one customer
scores 1). Without ties this is `pandas.qcut(values.rank(method="first"), 5)`; with ties, equal
values always get equal scores. "Worse" means longer ago (R), fewer orders (F), less spent (M).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext

from access.services import record_audit
from config.celery import publish
from config.failures import log_failure
from crm.errors import CapacityExceeded, ManagerInactive, NoActiveScheme, RunNotFailed, RunNotFound
from crm.models import (
    AccountManager,
    CustomerValue,
    RecomputeRun,
    RfmSegment,
    ScoringMethod,
    ScoringScheme,
    ValueChange,
    ValueTier,
)
from tracking.selectors import order_amount_sql

logger = logging.getLogger(__name__)

# Any constant will do: it names "the crm recompute" among PostgreSQL advisory locks.
RECOMPUTE_LOCK_KEY = 0x0C0FFEE5

# One statement from the orders to the rows that change: the scores, segment and tier of every
# customer (profiles with a paid, unrefunded order in the window), every profile's stage, all set
# against the stored rows, and only the rows that differ are kept. Recency is ranked on whole days
# before the reference date; only the last order's moment is kept, recency follows from it at
# read time. A read-only `CREATE TABLE AS` may run in parallel where an INSERT may not, and a
# night keeps a few ten thousand rows instead of every customer's. `{amount}` stands for an order
# event's amount (`tracking.selectors.order_amount_sql`).
CHANGES_SQL = """
CREATE TEMP TABLE crm_changed ON COMMIT DROP AS
WITH orders AS (
    -- An order sent twice (a retried event under a new event id) counts once.
    SELECT pe.profile_id,
           COALESCE(NULLIF(pe.properties->>'order_id', ''), pe.event_id::text) AS order_id,
           min(pe.timestamp) AS paid_at,
           max({amount}) AS amount
    FROM profiles_profileevent pe
    WHERE pe.name = 'order_paid' AND pe.timestamp > %(window_start)s AND pe.timestamp <= %(ref)s
      AND pe.profile_id IS NOT NULL
    GROUP BY 1, 2
),
refunded AS (
    SELECT DISTINCT pe.properties->>'order_id' AS order_id
    FROM profiles_profileevent pe
    WHERE pe.name = 'order_refunded' AND pe.timestamp <= %(ref)s AND pe.properties->>'order_id' <> ''
),
customers AS MATERIALIZED (
    SELECT o.profile_id, count(*)::int AS frequency, sum(o.amount) AS monetary, max(o.paid_at) AS last_order_at,
           floor(extract(epoch FROM (%(ref)s - max(o.paid_at))) / 86400)::int AS recency_days
    FROM orders o
    WHERE NOT EXISTS (SELECT 1 FROM refunded r WHERE r.order_id = o.order_id)
    GROUP BY o.profile_id
),
-- Recency and frequency take a few hundred distinct values: their ranks are read from a count of
-- customers per value, and only monetary sorts every customer.
recency_ranks AS (
    SELECT recency_days, sum(count(*)) OVER ()::bigint AS n,
           1 + COALESCE(sum(count(*)) OVER (ORDER BY recency_days DESC
                                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)::bigint AS r_rank
    FROM customers
    GROUP BY recency_days
),
frequency_ranks AS (
    SELECT frequency,
           1 + COALESCE(sum(count(*)) OVER (ORDER BY frequency
                                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)::bigint AS f_rank
    FROM customers
    GROUP BY frequency
),
ranked AS (
    SELECT c.*, rr.n, rr.r_rank, fr.f_rank, rank() OVER (ORDER BY c.monetary) AS m_rank
    FROM customers c
    JOIN recency_ranks rr ON rr.recency_days = c.recency_days
    JOIN frequency_ranks fr ON fr.frequency = c.frequency
),
scored AS (
    SELECT x.profile_id, x.n, x.frequency, round(x.monetary, 2) AS monetary, x.last_order_at,
           CASE WHEN %(method)s = 'thresholds'
                THEN 5 - (SELECT count(*) FROM unnest(%(r_edges)s::int[]) e WHERE x.recency_days > e)
                WHEN x.n = 1 THEN 1
                ELSE greatest(1, (5 * (x.r_rank - 1) + x.n - 2) / (x.n - 1)) END::smallint AS r,
           CASE WHEN %(method)s = 'thresholds'
                THEN 1 + (SELECT count(*) FROM unnest(%(f_edges)s::int[]) e WHERE x.frequency >= e)
                WHEN x.n = 1 THEN 1
                ELSE greatest(1, (5 * (x.f_rank - 1) + x.n - 2) / (x.n - 1)) END::smallint AS f,
           CASE WHEN %(method)s = 'thresholds'
                THEN 1 + (SELECT count(*) FROM unnest(%(m_edges)s::numeric[]) e WHERE x.monetary >= e)
                WHEN x.n = 1 THEN 1
                ELSE greatest(1, (5 * (x.m_rank - 1) + x.n - 2) / (x.n - 1)) END::smallint AS m
    FROM ranked x
),
segmented AS (
    SELECT s.*,
           CASE ((s.r > avg(s.r) OVER ())::int * 4 + (s.f > avg(s.f) OVER ())::int * 2
                 + (s.m > avg(s.m) OVER ())::int)
                WHEN 7 THEN 'important_value' WHEN 5 THEN 'important_development'
                WHEN 3 THEN 'important_retention' WHEN 1 THEN 'important_winback'
                WHEN 6 THEN 'general_value' WHEN 4 THEN 'general_development'
                WHEN 2 THEN 'general_retention' ELSE 'general_winback' END::varchar(32) AS segment
    FROM scored s
),
-- A tier depends only on (r, f, m, segment): match each of the 1,000 possible combinations once
-- (materialised, so that the planner cannot move the lookup to every customer's row).
combo_tiers AS MATERIALIZED (
    SELECT c.r, c.f, c.m, c.segment,
           (SELECT t.id FROM crm_valuetier t
            WHERE t.applies_to = 'customers'
              AND (cardinality(t.segments) = 0 OR c.segment = ANY(t.segments))
              AND c.r BETWEEN COALESCE(t.r_min, 1) AND COALESCE(t.r_max, 5)
              AND c.f BETWEEN COALESCE(t.f_min, 1) AND COALESCE(t.f_max, 5)
              AND c.m BETWEEN COALESCE(t.m_min, 1) AND COALESCE(t.m_max, 5)
            ORDER BY t.rank DESC, t.id LIMIT 1) AS tier_id
    FROM (SELECT r::smallint AS r, f::smallint AS f, m::smallint AS m, segment::varchar(32) AS segment
          FROM generate_series(1, 5) r, generate_series(1, 5) f, generate_series(1, 5) m,
               unnest(%(segments)s::text[]) segment) c
),
scored_customers AS (
    SELECT s.profile_id, s.frequency, s.monetary, s.last_order_at, s.r, s.f, s.m, s.segment, ct.tier_id, s.n
    FROM segmented s
    JOIN combo_tiers ct ON ct.r = s.r AND ct.f = s.f AND ct.m = s.m AND ct.segment = s.segment
),
-- Every profile's stage and values against its stored row: a night that merely moves the
-- reference date on keeps the few customers whose scores, tier or stage moved. Rows without a
-- current profile go: a deleted profile's (should a delete bypass Django's cascade) and a merged
-- one's, whose orders now count for the profile it was merged into.
people AS (
    SELECT COALESCE(p.id, old.profile_id) AS profile_id, p.id IS NULL AS gone,
           s.frequency, s.monetary, s.r, s.f, s.m, COALESCE(s.segment, '') AS segment,
           CASE WHEN s.profile_id IS NULL
                THEN (SELECT t.id FROM crm_valuetier t WHERE t.applies_to = 'without_orders'
                      ORDER BY t.rank DESC, t.id LIMIT 1)
                ELSE s.tier_id END AS tier_id,
           s.last_order_at, s.n AS customers,
           COALESCE(greatest(p.last_seen_at, s.last_order_at), p.first_seen_at, p.signup_at, p.created_at)
               AS last_active_at,
           COALESCE(p.signup_at, p.first_seen_at, p.created_at) AS registered_at,
           old.profile_id IS NULL AS is_new,
           old.frequency AS old_frequency, old.monetary AS old_monetary, old.r AS old_r, old.f AS old_f,
           old.m AS old_m, old.segment AS old_segment, old.tier_id AS old_tier_id, old.lifecycle AS old_lifecycle,
           old.lifecycle_since AS old_lifecycle_since, old.last_order_at AS old_last_order_at,
           old.last_active_at AS old_last_active_at
    FROM (SELECT * FROM profiles_profile WHERE merged_into_id IS NULL) p
    FULL JOIN crm_customervalue old ON old.profile_id = p.id
    LEFT JOIN scored_customers s ON s.profile_id = p.id
),
staged AS (
    SELECT pp.*,
           CASE WHEN pp.last_active_at <= %(churned_before)s THEN 'churned'
                WHEN pp.last_active_at <= %(silent_before)s THEN 'silent'
                WHEN pp.old_lifecycle IN ('silent', 'churned') THEN 'reactivated'
                WHEN pp.old_lifecycle = 'reactivated' AND pp.old_lifecycle_since > %(reactivated_after)s
                     THEN 'reactivated'
                WHEN pp.registered_at > %(new_after)s THEN 'new'
                ELSE 'active' END::varchar(16) AS lifecycle
    FROM people pp
)
SELECT st.profile_id, st.gone, st.frequency, st.monetary, st.r, st.f, st.m, st.segment, st.tier_id, st.lifecycle,
       CASE WHEN st.lifecycle IS DISTINCT FROM st.old_lifecycle THEN %(now)s
            ELSE st.old_lifecycle_since END AS lifecycle_since,
       st.last_order_at, st.last_active_at,
       COALESCE(st.old_lifecycle, '') AS old_lifecycle, st.old_tier_id,
       COALESCE(st.old_segment, '') AS old_segment,
       -- The number of customers, the same on every customer's row.
       st.customers
FROM staged st
-- Two row constructors: compared column by column, without building a record per row.
WHERE st.is_new OR st.gone
   OR (st.old_frequency, st.old_monetary, st.old_r, st.old_f, st.old_m, st.old_segment, st.old_tier_id,
       st.old_lifecycle, st.old_last_order_at, st.old_last_active_at)
      IS DISTINCT FROM (st.frequency, st.monetary, st.r, st.f, st.m, st.segment, st.tier_id,
                        st.lifecycle, st.last_order_at, st.last_active_at)
"""

# The changed rows are written and the history is appended from them, in one statement (both
# read the table as it was before the statement).
APPLY_SQL = """
WITH changed AS MATERIALIZED (
    SELECT * FROM crm_changed
    -- In key order, the order of both tables' indexes on the profile: on the first night a
    -- million rows then fill index pages one after the other instead of all over the index.
    ORDER BY profile_id
),
-- ON CONFLICT also keeps a row that appeared meanwhile (the recompute lock serialises
-- recomputes, not other writers) from failing the whole run.
written AS (
    INSERT INTO crm_customervalue AS cv (profile_id, frequency, monetary, r, f, m, segment, tier_id, lifecycle,
                                         lifecycle_since, last_order_at, last_active_at, computed_at)
    SELECT c.profile_id, c.frequency, c.monetary, c.r, c.f, c.m, c.segment, c.tier_id, c.lifecycle,
           c.lifecycle_since, c.last_order_at, c.last_active_at, %(now)s
    FROM changed c
    WHERE NOT c.gone
    ON CONFLICT (profile_id) DO UPDATE SET
        frequency = EXCLUDED.frequency, monetary = EXCLUDED.monetary, r = EXCLUDED.r, f = EXCLUDED.f,
        m = EXCLUDED.m, segment = EXCLUDED.segment, tier_id = EXCLUDED.tier_id, lifecycle = EXCLUDED.lifecycle,
        lifecycle_since = EXCLUDED.lifecycle_since, last_order_at = EXCLUDED.last_order_at,
        last_active_at = EXCLUDED.last_active_at, computed_at = EXCLUDED.computed_at
    RETURNING 1
),
logged AS (
    INSERT INTO crm_valuechange (profile_id, what, from_value, to_value, at, run_id)
    SELECT c.profile_id, v.what, v.from_value, v.to_value, %(now)s, %(run_id)s
    FROM changed c
    LEFT JOIN crm_valuetier ot ON ot.id = c.old_tier_id
    LEFT JOIN crm_valuetier nt ON nt.id = c.tier_id
    CROSS JOIN LATERAL (
        VALUES ('lifecycle', c.old_lifecycle, c.lifecycle::text),
               ('segment', c.old_segment, c.segment::text),
               ('tier', COALESCE(ot.slug, ''), COALESCE(nt.slug, ''))
    ) AS v(what, from_value, to_value)
    WHERE NOT c.gone AND v.from_value <> v.to_value
    RETURNING 1
),
-- By the primary key: a join would read the whole table for the few rows that go.
dropped AS (
    DELETE FROM crm_customervalue cv
    WHERE cv.profile_id = ANY(ARRAY(SELECT c.profile_id FROM changed c WHERE c.gone))
    RETURNING 1
)
SELECT (SELECT count(*) FROM profiles_profile WHERE merged_into_id IS NULL),
       (SELECT count(*) FROM written), (SELECT count(*) FROM logged), (SELECT count(*) FROM dropped)
"""

# Customers who left every tier that gets a manager give their manager's slot back. Rows are
# updated by primary key (`= ANY(ARRAY(...))`): a join would read the whole table for a few rows.
RELEASE_MANAGERS_SQL = """
WITH leaving AS MATERIALIZED (
    SELECT cv.profile_id, cv.account_manager_id
    FROM crm_customervalue cv
    LEFT JOIN crm_valuetier t ON t.id = cv.tier_id
    WHERE cv.account_manager_id IS NOT NULL AND NOT COALESCE(t.gets_account_manager, false)
),
released AS (
    UPDATE crm_customervalue cv SET account_manager_id = NULL
    FROM leaving l
    WHERE cv.profile_id = l.profile_id AND cv.profile_id = ANY(ARRAY(SELECT profile_id FROM leaving))
    RETURNING cv.profile_id, l.account_manager_id
)
INSERT INTO crm_valuechange (profile_id, what, from_value, to_value, at, run_id)
SELECT r.profile_id, 'account_manager', u.username, '', %(now)s, %(run_id)s
FROM released r JOIN crm_accountmanager am ON am.id = r.account_manager_id JOIN auth_user u ON u.id = am.user_id
"""

# Water-filling: each active manager offers the slots from (current load + 1) up to capacity;
# slot k of every manager is taken before slot k + 1 of any, so new customers go to the least
# loaded managers first and nobody goes over capacity. The most valuable customers come first:
# only as many of them as there are free slots are ranked.
ASSIGN_MANAGERS_SQL = """
WITH load AS (
    SELECT am.id, am.capacity, count(cv.profile_id) AS customers
    FROM crm_accountmanager am
    LEFT JOIN crm_customervalue cv ON cv.account_manager_id = am.id AND cv.account_manager_id IS NOT NULL
    WHERE am.is_active
    GROUP BY am.id, am.capacity
),
slots AS MATERIALIZED (
    SELECT l.id AS manager_id, row_number() OVER (ORDER BY s.slot, l.customers, l.id) AS k
    FROM load l CROSS JOIN LATERAL generate_series(l.customers + 1, l.capacity) AS s(slot)
),
waiting AS MATERIALIZED (
    SELECT cv.profile_id, cv.monetary
    FROM crm_customervalue cv
    WHERE cv.tier_id = ANY(ARRAY(SELECT t.id FROM crm_valuetier t WHERE t.gets_account_manager))
      AND cv.account_manager_id IS NULL
),
chosen AS (
    SELECT w.profile_id, row_number() OVER (ORDER BY w.monetary DESC NULLS LAST, w.profile_id) AS k
    FROM (SELECT * FROM waiting ORDER BY monetary DESC NULLS LAST, profile_id
          LIMIT (SELECT count(*) FROM slots)) w
),
pairs AS MATERIALIZED (
    SELECT c.profile_id, s.manager_id FROM chosen c JOIN slots s ON s.k = c.k
),
assigned AS (
    UPDATE crm_customervalue cv SET account_manager_id = p.manager_id
    FROM pairs p
    WHERE cv.profile_id = p.profile_id AND cv.profile_id = ANY(ARRAY(SELECT profile_id FROM pairs))
    RETURNING cv.profile_id, cv.account_manager_id
),
logged AS (
    INSERT INTO crm_valuechange (profile_id, what, from_value, to_value, at, run_id)
    SELECT a.profile_id, 'account_manager', '', u.username, %(now)s, %(run_id)s
    FROM assigned a JOIN crm_accountmanager am ON am.id = a.account_manager_id JOIN auth_user u ON u.id = am.user_id
)
SELECT (SELECT count(*) FROM assigned), (SELECT count(*) FROM waiting)
"""


@dataclass(frozen=True)
class RecomputeParams:
    reference_at: datetime
    window_days: int
    method: str
    r_edges: list[int]
    f_edges: list[int]
    m_edges: list[Any]
    new_days: int
    silent_days: int
    churned_days: int
    reactivated_days: int

    @classmethod
    def from_scheme(cls, scheme: ScoringScheme, *, now: datetime) -> RecomputeParams:
        return cls(
            reference_at=scheme.reference_at or now,
            window_days=scheme.window_days,
            method=scheme.method,
            r_edges=list(scheme.r_thresholds or []),
            f_edges=list(scheme.f_thresholds or []),
            m_edges=list(scheme.m_thresholds or []),
            new_days=scheme.new_days,
            silent_days=scheme.silent_days,
            churned_days=scheme.churned_days,
            reactivated_days=scheme.reactivated_days,
        )

    def as_sql_params(self, *, now: datetime) -> dict[str, Any]:
        return {
            "ref": self.reference_at,
            "window_start": self.reference_at - timedelta(days=self.window_days),
            "method": self.method,
            "r_edges": self.r_edges,
            "f_edges": self.f_edges,
            "m_edges": self.m_edges,
            "new_days": self.new_days,
            "silent_days": self.silent_days,
            "churned_days": self.churned_days,
            "reactivated_days": self.reactivated_days,
            # Moments rather than day counts: compared with every profile's, they are computed once.
            "churned_before": self.reference_at - timedelta(days=self.churned_days),
            "silent_before": self.reference_at - timedelta(days=self.silent_days),
            "reactivated_after": self.reference_at - timedelta(days=self.reactivated_days),
            "new_after": self.reference_at - timedelta(days=self.new_days),
            "segments": list(RfmSegment.values),
            "now": now,
        }


DEFAULT_TIERS = [
    # slug, name, rank, applies_to, segments, gets_account_manager
    ("core", "Core", 40, "customers", ["important_value"], True),
    (
        "important",
        "Important",
        30,
        "customers",
        ["important_development", "important_retention", "important_winback"],
        False,
    ),
    ("ordinary", "Ordinary", 20, "customers", [], False),
    ("potential", "Potential", 10, "without_orders", [], False),
]


@transaction.atomic
def ensure_default_setup() -> ScoringScheme:
    """The four classic tiers and an active scheme, where missing (a fresh or emptied database);
    what operators already configured is left alone."""
    for slug, name, rank, applies_to, segments, manager in DEFAULT_TIERS:
        ValueTier.objects.get_or_create(
            slug=slug,
            defaults={
                "name": name,
                "rank": rank,
                "applies_to": applies_to,
                "segments": segments,
                "gets_account_manager": manager,
            },
        )
    scheme = ScoringScheme.objects.filter(is_active=True).first()
    if scheme is None:
        scheme, _ = ScoringScheme.objects.get_or_create(name="Default")
        ScoringScheme.objects.filter(pk=scheme.pk).update(is_active=True)
        scheme.is_active = True
    return scheme


def work_mem() -> str:
    """Memory for the recompute's sorts and hashes (PostgreSQL `work_mem`), for this transaction:
    https://www.postgresql.org/docs/current/runtime-config-resource.html#GUC-WORK-MEM"""
    return str(getattr(settings, "OPSLOOP_CRM_RECOMPUTE_WORK_MEM", "256MB"))


def active_scheme() -> ScoringScheme:
    scheme = ScoringScheme.objects.filter(is_active=True).first()
    if scheme is None:
        raise NoActiveScheme("no active scoring scheme: mark one active in the admin")
    if scheme.method == ScoringMethod.THRESHOLDS:
        scheme.full_clean(exclude=["name"])
    return scheme


# --- what operators edit: schemes, tiers, account managers --------------------------------------


@transaction.atomic
def save_scoring_scheme(
    *, scheme: ScoringScheme, changed: Sequence[str] = (), actor: AbstractBaseUser | None = None
) -> ScoringScheme:
    """Create or change a scoring scheme; saved active, it retires the active one (one active
    scheme, which the next recompute applies)."""
    created = scheme._state.adding
    if scheme.is_active:
        ScoringScheme.objects.filter(is_active=True).exclude(pk=scheme.pk).update(is_active=False)
    scheme.save()
    record_audit(
        actor=actor,
        action="crm.scheme_created" if created else "crm.scheme_changed",
        obj=scheme,
        details={"changed": list(changed)},
    )
    return scheme


@transaction.atomic
def activate_scoring_scheme(*, scheme_id: int, actor: AbstractBaseUser | None = None) -> ScoringScheme:
    """Make this scheme the active one (from the next recompute); the others retire."""
    scheme = ScoringScheme.objects.select_for_update().get(pk=scheme_id)
    ScoringScheme.objects.exclude(pk=scheme.pk).update(is_active=False)
    ScoringScheme.objects.filter(pk=scheme.pk).update(is_active=True)
    scheme.is_active = True
    record_audit(actor=actor, action="crm.scheme_activated", obj=scheme)
    return scheme


@transaction.atomic
def delete_scoring_scheme(*, scheme: ScoringScheme, actor: AbstractBaseUser | None = None) -> None:
    record_audit(actor=actor, action="crm.scheme_deleted", obj=scheme, details={"name": scheme.name})
    scheme.delete()


@transaction.atomic
def save_value_tier(
    *, tier: ValueTier, changed: Sequence[str] = (), actor: AbstractBaseUser | None = None
) -> ValueTier:
    """Create or change a value tier; profiles move into it at the next recompute."""
    created = tier._state.adding
    tier.save()
    record_audit(
        actor=actor,
        action="crm.tier_created" if created else "crm.tier_changed",
        obj=tier,
        details={"changed": list(changed)},
    )
    return tier


@transaction.atomic
def delete_value_tier(*, tier: ValueTier, actor: AbstractBaseUser | None = None) -> None:
    record_audit(actor=actor, action="crm.tier_deleted", obj=tier, details={"name": tier.name})
    tier.delete()


@transaction.atomic
def save_account_manager(
    *, manager: AccountManager, changed: Sequence[str] = (), actor: AbstractBaseUser | None = None
) -> AccountManager:
    """Add or change an account manager (capacity, whether they take customers)."""
    created = manager._state.adding
    manager.save()
    record_audit(
        actor=actor,
        action="crm.account_manager_added" if created else "crm.account_manager_changed",
        obj=manager,
        details={"changed": list(changed)},
    )
    return manager


@transaction.atomic
def request_recompute(*, requested_by: AbstractBaseUser | None = None) -> RecomputeRun:
    """Queue a recompute now (the admin's button); the run is visible at once as queued."""
    from crm import tasks  # tasks import services: import here to keep the module graph acyclic

    run = RecomputeRun.objects.create(
        requested_by=requested_by if getattr(requested_by, "is_authenticated", False) else None,
        scheme=ScoringScheme.objects.filter(is_active=True).first(),
    )
    record_audit(actor=requested_by, action="crm.recompute_requested", obj=run)
    transaction.on_commit(
        lambda: publish(f"value recompute run {run.pk}", tasks.recompute_customer_values, kwargs={"run_id": run.pk})
    )
    return run


# The steps of a recompute, in order, as `progress` names them and `RecomputeRun.timings` keys them.
RECOMPUTE_STEPS = ("scores", "apply", "release_managers", "assign_managers")


def recompute_customer_values(
    *,
    run_id: int | None = None,
    now: datetime | None = None,
    scheme: ScoringScheme | None = None,
    progress: Callable[[str], None] | None = None,
) -> RecomputeRun:
    """Recompute every profile's RFM scores, segment, tier, lifecycle stage and account manager
    in one transaction, recording each change. A run already finished is returned untouched, and
    a run that finds another in progress is marked skipped, so redelivered tasks are harmless.
    A failed run is marked failed with the reason (traceback in the log), the error raised again,
    and it stays failed until `retry_recompute` queues it. `progress(step)` is called after each
    of `RECOMPUTE_STEPS`."""
    now = now or timezone.now()
    if run_id is None:
        run = RecomputeRun.objects.create(requested_at=now)
    else:
        run = RecomputeRun.objects.get(pk=run_id)
        if run.status in (RecomputeRun.Status.DONE, RecomputeRun.Status.SKIPPED, RecomputeRun.Status.FAILED):
            return run
    try:
        scheme = scheme or active_scheme()
        params = RecomputeParams.from_scheme(scheme, now=now)
        RecomputeRun.objects.filter(pk=run.pk).update(
            status=RecomputeRun.Status.RUNNING,
            started_at=timezone.now(),
            scheme=scheme,
            reference_at=params.reference_at,
            window_days=params.window_days,
        )
        _recompute(params=params, run_id=run.pk, now=now, progress=progress)
    except Exception as exc:
        RecomputeRun.objects.filter(pk=run.pk).update(
            status=RecomputeRun.Status.FAILED,
            finished_at=timezone.now(),
            error=log_failure(logger, f"value recompute run {run.pk}", exc),
        )
        raise
    run.refresh_from_db()
    return run


@transaction.atomic
def retry_recompute(*, run_id: int, actor: AbstractBaseUser | None = None, api_key: Any = None) -> RecomputeRun:
    """Queue a failed run again (admin action, API). It recomputes everything from the start: the
    failed run's transaction wrote nothing."""
    from crm import tasks  # tasks import services: import here to keep the module graph acyclic

    run = RecomputeRun.objects.select_for_update().filter(pk=run_id).first()
    if run is None:
        raise RunNotFound(gettext("No recompute run %(run)s.") % {"run": run_id})
    if run.status != RecomputeRun.Status.FAILED:
        raise RunNotFailed(
            gettext("Recompute run %(run)s is %(status)s: only a failed run is retried.")
            % {"run": run_id, "status": run.get_status_display()}
        )
    previous = run.error
    run.status, run.error, run.started_at, run.finished_at = RecomputeRun.Status.QUEUED, "", None, None
    run.save(update_fields=["status", "error", "started_at", "finished_at"])
    record_audit(
        actor=actor, api_key=api_key, action="crm.recompute_retried", obj=run, details={"previous_error": previous}
    )
    transaction.on_commit(
        lambda: publish(f"value recompute run {run.pk}", tasks.recompute_customer_values, kwargs={"run_id": run.pk})
    )
    return run


@transaction.atomic
def _recompute(
    *, params: RecomputeParams, run_id: int, now: datetime, progress: Callable[[str], None] | None = None
) -> None:
    """The run is marked finished in the transaction that writes the values: readers derive
    recency from the latest finished run's reference date, which must match the rows they see."""
    counts = _recompute_values(params=params, run_id=run_id, now=now, progress=progress or (lambda step: None))
    RecomputeRun.objects.filter(pk=run_id).update(finished_at=timezone.now(), **counts)


def _recompute_values(
    *, params: RecomputeParams, run_id: int, now: datetime, progress: Callable[[str], None]
) -> dict[str, Any]:
    sql_params = {**params.as_sql_params(now=now), "run_id": run_id}
    timings: dict[str, float] = {}

    def step(name: str, sql: str, args: Any = None) -> int:
        started = time.monotonic()
        cursor.execute(sql, args)
        timings[name] = round(time.monotonic() - started, 3)
        progress(name)
        return cursor.rowcount

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [RECOMPUTE_LOCK_KEY])
        if not cursor.fetchone()[0]:
            return {"status": RecomputeRun.Status.SKIPPED}
        # Every step joins whole tables, where hash joins are right. Statistics lag behind bulk
        # loads (an import, a fresh install), and a planner that believes a table holds one row
        # picks nested loops that turn quadratic, so they are ruled out for this transaction.
        cursor.execute("SET LOCAL enable_nestloop = off")
        # Likewise merge joins: misled by the same estimates, they sort a million rows to join
        # them with a few hundred.
        cursor.execute("SET LOCAL enable_mergejoin = off")
        # ... which inflates cost estimates past the JIT thresholds: compiling then costs more
        # than these plain scans and hashes ever gain from it.
        cursor.execute("SET LOCAL jit = off")
        cursor.execute("SELECT set_config('work_mem', %s, true)", [work_mem()])
        step("scores", CHANGES_SQL.replace("{amount}", order_amount_sql("pe.properties")), sql_params)
        started = time.monotonic()
        cursor.execute(APPLY_SQL, sql_params)
        profiles, written, changes, dropped = cursor.fetchone()
        timings["apply"] = round(time.monotonic() - started, 3)
        progress("apply")
        cursor.execute("SELECT max(customers) FROM crm_changed")
        customers = cursor.fetchone()[0]
        if customers is None:
            # No customer's row changed, so the stored rows (now written) count them.
            cursor.execute("SELECT count(*) FROM crm_customervalue WHERE frequency IS NOT NULL")
            customers = cursor.fetchone()[0]
        # Managers are locked so that an operator's reassignment cannot overfill one meanwhile.
        cursor.execute("SELECT id FROM crm_accountmanager ORDER BY id FOR UPDATE")
        released = step("release_managers", RELEASE_MANAGERS_SQL, sql_params)
        started = time.monotonic()
        cursor.execute(ASSIGN_MANAGERS_SQL, sql_params)
        assigned, waiting = cursor.fetchone()
        timings["assign_managers"] = round(time.monotonic() - started, 3)
        progress("assign_managers")
        cursor.execute("DROP TABLE crm_changed")
    logger.info("crm recompute run %s: %s rows written, %s dropped, %s", run_id, written, dropped, timings)
    return {
        "status": RecomputeRun.Status.DONE,
        "profiles": profiles,
        "customers": customers,
        "changes": changes + released + assigned,
        "managers_assigned": assigned,
        "unassigned_for_capacity": waiting - assigned,
        "timings": timings,
    }


@transaction.atomic
def reassign_account_manager(
    *, profile_ids: list[int], manager: AccountManager | None, actor: AbstractBaseUser | None = None
) -> int:
    """Give these customers to `manager` (or to nobody); refused if it would overfill the manager.
    Returns how many customers changed hands."""
    if manager is not None:
        manager = AccountManager.objects.select_for_update().select_related("user").get(pk=manager.pk)
        if not manager.is_active:
            raise ManagerInactive(gettext("%(manager)s is not an active account manager") % {"manager": manager})
    values = list(
        CustomerValue.objects.select_for_update(of=("self",))
        .filter(profile_id__in=profile_ids)
        .exclude(account_manager=manager)
        .select_related("account_manager__user")
    )
    if manager is not None:
        load = CustomerValue.objects.filter(account_manager=manager).count()
        if load + len(values) > manager.capacity:
            raise CapacityExceeded(
                gettext("%(manager)s looks after %(load)s of %(capacity)s customers; %(more)s more do not fit")
                % {"manager": manager, "load": load, "capacity": manager.capacity, "more": len(values)},
                load=load,
                capacity=manager.capacity,
            )
    now = timezone.now()
    to_name = manager.user.get_username() if manager else ""
    ValueChange.objects.bulk_create(
        [
            ValueChange(
                profile_id=v.profile_id,
                what=ValueChange.What.ACCOUNT_MANAGER,
                from_value=v.account_manager.user.get_username() if v.account_manager else "",
                to_value=to_name,
                at=now,
            )
            for v in values
        ]
    )
    moved = CustomerValue.objects.filter(profile_id__in=[v.profile_id for v in values]).update(account_manager=manager)
    record_audit(
        actor=actor,
        action="crm.account_manager_reassigned",
        obj=manager,
        details={
            "profiles": sorted(v.profile_id for v in values),
            "from": sorted({v.account_manager_id for v in values if v.account_manager_id}),
            "to": manager.pk if manager else None,
        },
    )
    return moved
