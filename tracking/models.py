"""Events from the product: behaviour, traffic and business facts. Append-only.

An event is keyed by the product's ids (`user_id`, `anonymous_id`), never by our profile id: who
the person is gets resolved through `profiles.Identity` at read time, so merging two people
rewrites a mapping and never this table.
"""

from __future__ import annotations

import uuid

from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class EventKind(models.TextChoices):
    BEHAVIOR = "behavior", _("Behaviour")
    TRAFFIC = "traffic", _("Traffic")
    BUSINESS = "business", _("Business")


# Order events carry their `amount` as a decimal string; the database refuses any other form, so
# that no stored amount fails a cast to numeric (ingestion is stricter still: two decimal places).
ORDER_EVENTS = ("order_paid", "order_refunded")
STORED_AMOUNT_PATTERN = r"^[0-9]{1,15}(\.[0-9]{1,12})?$"


class Event(models.Model):
    """One thing a person did.

    Indexes follow the reads of the layers above:
    - `(name, timestamp)`: indicators, tag rules and RFM select one event name over a time window;
    - `(user_id, timestamp)` and `(anonymous_id, timestamp)`: a person's timeline (customer
      service, attribution of a campaign's goal event to a recipient);
    - `(utm_source, timestamp)`, partial on events that carry a source: traffic analyses by source
      over a window; being partial, behaviour and business events do not pay for it on insert;
    - BRIN on `timestamp` and on `received_at`: events arrive roughly in time order, so a block
      range index a few pages large answers whole-table window scans (daily rollups, the admin's
      date drill-down, "what arrived in the last hour") without the insert cost of a B-tree;
    - `event_id` unique: de-duplication of retried batches, enforced by the database so that
      racing requests cannot both store it (`INSERT ... ON CONFLICT DO NOTHING`).

    Context keys outside the known columns are kept in `context_extra` rather than dropped.
    """

    event_id = models.UUIDField(unique=True, default=uuid.uuid4)
    name = models.CharField(max_length=64)
    kind = models.CharField(max_length=16, choices=EventKind.choices, default=EventKind.BEHAVIOR)
    timestamp = models.DateTimeField(help_text=_("When it happened, as the product reported it."))
    received_at = models.DateTimeField(default=timezone.now)
    user_id = models.CharField(max_length=128, null=True, blank=True)
    anonymous_id = models.CharField(max_length=128, null=True, blank=True)
    properties = models.JSONField(default=dict, blank=True)
    # Context fields that analyses filter on, as real columns.
    url = models.TextField(_("URL"), blank=True, default="")
    path = models.TextField(blank=True, default="")
    referrer = models.TextField(blank=True, default="")
    utm_source = models.CharField(_("UTM source"), max_length=128, blank=True, default="")
    utm_medium = models.CharField(_("UTM medium"), max_length=128, blank=True, default="")
    utm_campaign = models.CharField(_("UTM campaign"), max_length=128, blank=True, default="")
    device = models.CharField(max_length=64, blank=True, default="")
    os = models.CharField(_("OS"), max_length=64, blank=True, default="")
    ip = models.GenericIPAddressField(_("IP"), null=True, blank=True)
    locale = models.CharField(max_length=32, blank=True, default="")
    context_extra = models.JSONField(
        default=dict, blank=True, help_text=_("Context keys that have no column of their own.")
    )

    class Meta:
        indexes = [
            models.Index(fields=["name", "timestamp"], name="event_name_time"),
            models.Index(fields=["user_id", "timestamp"], name="event_user_time"),
            models.Index(
                fields=["anonymous_id", "timestamp"],
                name="event_anon_time",
                condition=models.Q(anonymous_id__isnull=False),
            ),
            models.Index(
                fields=["utm_source", "timestamp"],
                name="event_source_time",
                condition=~models.Q(utm_source=""),
            ),
            BrinIndex(fields=["timestamp"], name="event_time_brin", autosummarize=True),
            BrinIndex(fields=["received_at"], name="event_received_brin", autosummarize=True),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user_id__isnull=False) | models.Q(anonymous_id__isnull=False),
                name="event_has_person_id",
            ),
            # Sums over millions of orders then cast the amount as it is, without a pattern match
            # per row (see `tracking.selectors.order_amount_sql`).
            models.CheckConstraint(
                condition=~models.Q(name__in=ORDER_EVENTS)
                | models.Q(properties__amount__isnull=True)
                | models.Q(properties__amount__regex=STORED_AMOUNT_PATTERN),
                name="event_order_amount_decimal",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} @ {self.timestamp:%Y-%m-%d %H:%M:%S}"


# --- Shipping to ClickHouse ----------------------------------------------------------------------


class ShippingBacklog(models.Model):
    """Stored events not in ClickHouse yet (the outbox): one run of consecutive event ids per row,
    written by ingestion in the transaction that stores them, and only when ClickHouse is on.

    A row moves only forward: a shipping run claims it for a batch (`batch`, committed before the
    insert: the insert's deduplication token), inserts the batch into ClickHouse and deletes it.
    A run that dies between the insert and the delete leaves the row claimed, and the next run
    inserts the same batch under the same token, which ClickHouse drops. An outbox, not a
    watermark on the id sequence: ids are drawn before commit, so a batch committing late would
    fall behind a watermark that had passed it."""

    first_event_id = models.BigIntegerField()
    last_event_id = models.BigIntegerField()
    batch = models.UUIDField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("shipping backlog run")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(last_event_id__gte=models.F("first_event_id")), name="shipping_backlog_run_order"
            )
        ]
        # Which run holds an id: the last run starting at or before it (runs never overlap).
        indexes = [models.Index(fields=["first_event_id"], name="shipping_backlog_first")]

    def __str__(self) -> str:
        return f"events {self.first_event_id}-{self.last_event_id}"


class ShippingState(models.Model):
    """How shipping to ClickHouse goes: the last run, the last error and what was shipped (one
    row, `clickhouse`)."""

    name = models.CharField(max_length=32, primary_key=True)
    last_run_at = models.DateTimeField(_("last run"), null=True, blank=True)
    last_success_at = models.DateTimeField(_("last success"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True, default="")
    last_error_at = models.DateTimeField(_("last error at"), null=True, blank=True)
    failures = models.IntegerField(_("failures in a row"), default=0)
    shipped_events = models.BigIntegerField(_("events shipped"), default=0)
    shipped_batches = models.BigIntegerField(_("batches shipped"), default=0)
    deleted_events = models.BigIntegerField(_("events deleted by retention"), default=0)
    last_retention_at = models.DateTimeField(_("last retention run"), null=True, blank=True)
    # The history backfill (`ship_history`): events stored while shipping was off are queued up
    # to this id; once every id is queued (`history_queued_at`) and shipped (`history_loaded_at`)
    # ClickHouse answers the pages, and retention may delete raw events.
    history_through = models.BigIntegerField(_("history queued through event id"), null=True, blank=True)
    history_queued_at = models.DateTimeField(_("history queued"), null=True, blank=True)
    history_loaded_at = models.DateTimeField(_("history loaded"), null=True, blank=True)

    class Meta:
        verbose_name = _("shipping to ClickHouse")
        verbose_name_plural = _("shipping to ClickHouse")

    def __str__(self) -> str:
        return self.name
