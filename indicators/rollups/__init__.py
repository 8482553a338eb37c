"""Writes of the indicator rollups: events folded, incrementally, into per-person-per-day activity
and the per-day tables that dashboards, the API and goals read.

The person of an event-only indicator is its "person key": the product's `user_id`, else the
event's `anonymous_id`. Identity merges live in `profiles`; they are not applied here.

How a run stays small and exact:
- Ingestion queues the id runs of the events it stores (`RollupBacklog`, written by
  `queue_stored_events` in the storing transaction). A run takes backlog rows (about
  `chunk_events` events each chunk), folds their events and deletes the rows in the same
  transaction. No event is skipped however long an ingestion transaction stays open (its ids
  are taken before it commits): its rows become visible, and are folded, when it commits. So
  there is no settle delay to wait out any more.
- Additive facts (a person's events, orders and amounts of a day; searches per query and day) are
  added to with `INSERT ... SELECT ... ON CONFLICT DO UPDATE`. A late event (an old `timestamp`
  arriving now) is simply added to its own day.
- For the key-behaviour and churn pages: each person's first day of each event name (moves only
  back), each person-day's last `TAIL_EVENTS` events (merged, newest kept), and person-days
  counted by their next day of activity (moved for the rows between a person's day before the
  chunk's first new day and its last new day only).
- Everything derived (first days, cohort cells, the day's indicators, WAU/MAU) is recomputed only
  for the people and days that the chunk touched. Cohort cells are moved by the touched people's
  contribution: theirs before the chunk is subtracted, theirs after it added.
- Each chunk, with its backlog rows, is one transaction: a crashed run leaves the tables and the
  backlog as they were, and a second run finds nothing new. Runs queue on `RollupState`'s row
  lock. `rebuild()` computes the same tables from scratch, from one snapshot of the events, and
  empties the backlog of that snapshot.

Modules: `statements` (every statement, once), `fold` (the backlog and the incremental fold),
`rebuild` (from scratch or from a day on), `common` (what both share).
"""

from indicators.rollups.common import DEFAULT_CHUNK_EVENTS, STATE, Progress, RollupResult
from indicators.rollups.fold import MAX_RUNS, fold_new_events, pending_events, queue_stored_events
from indicators.rollups.rebuild import days_to_rebuild, rebuild
from indicators.rollups.statements import DAY_PERIODS

__all__ = [
    "DAY_PERIODS",
    "DEFAULT_CHUNK_EVENTS",
    "MAX_RUNS",
    "STATE",
    "Progress",
    "RollupResult",
    "days_to_rebuild",
    "fold_new_events",
    "pending_events",
    "queue_stored_events",
    "rebuild",
]
