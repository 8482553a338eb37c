"""What operators see of the events: an append-only log to search, filter and chart, never edit."""

from __future__ import annotations

import json
import uuid

from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from access.readonly import ReadOnlyAdmin
from config import formatting
from config.celery import publish
from tracking import selectors, shipping, tasks
from tracking.events_store import clickhouse_enabled, clickhouse_store
from tracking.events_store.clickhouse import ClickHouseUnavailable
from tracking.models import Event, EventKind, ShippingState


class EstimatedCountPaginator(Paginator):
    """Counts an unfiltered list from the planner's estimate: an exact count of a table this big
    would hold the page for minutes. Any filter or search gets an exact count."""

    estimate_above = 100_000

    @cached_property
    def count(self) -> int:
        query = getattr(self.object_list, "query", None)
        if query is not None and not query.where:
            estimate = selectors.estimated_event_count()
            if estimate > self.estimate_above:
                return estimate
        return super().count


class _IndexedValuesFilter(admin.SimpleListFilter):
    """A filter whose choices come from a loose index scan rather than DISTINCT over the table."""

    values_of = staticmethod(lambda: [])

    def lookups(self, request, model_admin):
        return [(value, value) for value in self.values_of()]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(**{self.parameter_name: self.value()})
        return queryset


class NameFilter(_IndexedValuesFilter):
    title = _("name")
    parameter_name = "name"
    values_of = staticmethod(selectors.event_names)


class UtmSourceFilter(_IndexedValuesFilter):
    title = _("UTM source")
    parameter_name = "utm_source"
    values_of = staticmethod(selectors.utm_sources)


def _pretty_json(value) -> str:
    return format_html("<pre style='margin:0'>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False))


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    change_list_template = "admin/tracking/event/change_list.html"
    list_display = ("timestamp", "name", "kind", "user_id", "anonymous_id", "utm_source", "path", "received_at")
    list_filter = (NameFilter, "kind", UtmSourceFilter)
    date_hierarchy = "timestamp"
    search_fields = ("user_id", "anonymous_id", "event_id")
    search_help_text = _("An exact user id, anonymous id or event id.")
    ordering = ("-id",)  # newest received first, straight from the primary key
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 100
    fieldsets = (
        (None, {"fields": ("event_id", "name", "kind", "timestamp", "received_at", "user_id", "anonymous_id")}),
        (_("Properties"), {"fields": ("properties_json",)}),
        (
            _("Context"),
            {
                "fields": (
                    "url",
                    "path",
                    "referrer",
                    ("utm_source", "utm_medium", "utm_campaign"),
                    ("device", "os", "ip", "locale"),
                    "context_extra_json",
                )
            },
        ),
    )
    readonly_fields = ("properties_json", "context_extra_json")

    @admin.display(description=_("properties"))
    def properties_json(self, obj: Event) -> str:
        return _pretty_json(obj.properties)

    @admin.display(description=_("other context"))
    def context_extra_json(self, obj: Event) -> str:
        return _pretty_json(obj.context_extra)

    def get_search_results(self, request, queryset, search_term):
        # Exact matches only: each uses an index, where Django's default `icontains` over three
        # columns would scan the whole table.
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(event_id=uuid.UUID(term)), False
        except ValueError:
            pass
        by_user = queryset.filter(user_id=term)
        by_anonymous = queryset.filter(anonymous_id=term)
        return by_user | by_anonymous, False

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None) or {}
        changelist = context.get("cl")
        if changelist is not None:
            # The chart follows the filters in use, so "page_view from newsletter" is one click.
            volume = selectors.daily_volume(events=changelist.queryset)
            # The legend names each kind in the reader's language.
            volume["kind_labels"] = {kind: str(label) for kind, label in EventKind.choices}
            response.context_data["daily_volume"] = volume
        return response


@admin.register(ShippingState)
class ShippingStateAdmin(ReadOnlyAdmin):
    """Shipping to ClickHouse at a glance: what waits, the last run and the last error, and a
    button to try again now rather than at the next minute."""

    list_display = (
        "name",
        "engine",
        "backlog",
        "last_run_at",
        "last_success_at",
        "failures",
        "last_error_short",
        "shipped_events",
        "history_loaded_at",
        "deleted_events",
    )
    readonly_fields = (
        "engine",
        "backlog",
        "oldest_waiting",
        "last_run_at",
        "last_success_at",
        "failures",
        "last_error",
        "last_error_at",
        "shipped_events",
        "shipped_batches",
        "history_through",
        "history_queued_at",
        "history_loaded_at",
        "deleted_events",
        "last_retention_at",
        "retention",
        "finished_days",
    )
    fields = readonly_fields
    actions = ["ship_now"]

    def get_queryset(self, request):
        shipping.state()  # the page shows the row before the first run
        return super().get_queryset(request)

    @admin.display(description=_("events store"))
    def engine(self, obj: ShippingState) -> str:
        return _("ClickHouse") if clickhouse_enabled() else _("PostgreSQL (shipping off)")

    @admin.display(description=_("events waiting"))
    def backlog(self, obj: ShippingState) -> int:
        return shipping.pending_events()

    @admin.display(description=_("waiting since"))
    def oldest_waiting(self, obj: ShippingState):
        return shipping.oldest_waiting()

    @admin.display(description=_("retention"))
    def retention(self, obj: ShippingState) -> str:
        refusal = shipping.retention_refusal()
        return _("runs nightly") if refusal is None else _("deletes nothing: %(reason)s") % {"reason": refusal}

    @admin.display(description=_("days finished in ClickHouse"))
    def finished_days(self, obj: ShippingState) -> str:
        """The day series read up to here from finished rows; each shipping run moves it on."""
        if not clickhouse_enabled():
            return formatting.MISSING
        try:
            day, written = clickhouse_store().finished_through()
        except ClickHouseUnavailable as error:
            return _("unknown: %(reason)s") % {"reason": error}
        if day is None:
            return _("none yet: the next shipping run finishes them")
        return _("through %(day)s (written %(moment)s)") % {
            "day": formatting.local_date(day),
            "moment": formatting.local_time(written),
        }

    @admin.display(description=_("last error"))
    def last_error_short(self, obj: ShippingState) -> str:
        return obj.last_error[:120]

    @admin.action(description=_("Ship the backlog now (try again)"))
    def ship_now(self, request, queryset):
        if publish("shipping to ClickHouse", tasks.ship_events):
            self.message_user(request, _("Shipping is queued: the page shows its outcome when it has run."))
        else:
            self.message_user(request, _("The task queue cannot be reached; beat will try again."), messages.ERROR)
