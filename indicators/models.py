"""The data products made of the events: rollups the dashboards read, funnels and goals.

Tables keep the names they had when these models lived in `tracking` (`tracking_*`): the move
to this app changed no data.
"""

from __future__ import annotations

import calendar
from datetime import date
from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from indicators.registry import Fold, Unit
from tracking.events_store.postgres import SAMPLE_BUCKETS as POSTGRES_SAMPLE_BUCKETS

# --- Rollups ---------------------------------------------------------------------------------------
# Maintained by `indicators.rollups` only (never edited by hand). The person of an event-only
# indicator is its "person key": the product's `user_id`, else its `anonymous_id`; identity merges
# live in `profiles` and are not applied here, so two ids of one person count as two people.


class RollupState(models.Model):
    """The rollups' bookkeeping row: its row lock keeps two rollup runs from interleaving, and it
    counts what they folded. Which events are still to fold is `RollupBacklog`'s, not an id
    cursor's: `last_event_id` is only the highest event id folded so far (for the operator)."""

    name = models.CharField(max_length=32, primary_key=True)
    last_event_id = models.BigIntegerField(default=0)
    events_folded = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "tracking_rollupcursor"

    def __str__(self) -> str:
        return f"{self.name}: up to event {self.last_event_id}"


class RollupBacklog(models.Model):
    """Stored events not folded into the rollups yet: one run of consecutive event ids
    (`first_event_id` to `last_event_id`, all stored by one ingestion batch) per row.

    Ingestion writes the row in the transaction that stores the events, and a rollup run deletes
    it in the transaction that folds them, so every stored event is either here or folded: a
    batch whose transaction stays open while later ids commit (ids come from the sequence before
    commit) is folded when it commits, where a cursor over event ids would pass over it for good."""

    first_event_id = models.BigIntegerField()
    last_event_id = models.BigIntegerField()
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "tracking_rollupbacklog"
        verbose_name = _("rollup backlog run")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(last_event_id__gte=models.F("first_event_id")), name="rollup_backlog_run_order"
            )
        ]

    def __str__(self) -> str:
        return f"events {self.first_event_id}-{self.last_event_id}"


class ActivityDay(models.Model):
    """One person's activity on one day (UTC): the base every event-only indicator is read from."""

    pk = models.CompositePrimaryKey("person_key", "day")
    person_key = models.CharField(max_length=128)
    day = models.DateField()
    events = models.IntegerField(default=0)
    orders = models.IntegerField(default=0, help_text=_("`order_paid` events."))
    refunds = models.IntegerField(default=0, help_text=_("`order_refunded` events."))
    paid_amount = models.DecimalField(max_digits=20, decimal_places=2, default=0)
    refunded_amount = models.DecimalField(max_digits=20, decimal_places=2, default=0)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()

    class Meta:
        db_table = "tracking_activityday"
        indexes = [models.Index(fields=["day"], name="activity_day_day")]

    def __str__(self) -> str:
        return f"{self.person_key} on {self.day}"


class ActivityPerson(models.Model):
    """A person's first and last day of activity, and first day with an order (cohorts, new users,
    repeat buyers); derived from `ActivityDay`."""

    person_key = models.CharField(max_length=128, primary_key=True)
    first_day = models.DateField()
    last_day = models.DateField()
    first_order_day = models.DateField(null=True, blank=True)

    class Meta:
        db_table = "tracking_activityperson"
        indexes = [
            models.Index(fields=["first_day"], name="activity_person_first"),
            models.Index(fields=["first_order_day"], name="activity_person_first_order"),
            # WAU/MAU of the last day: a range count of the people last active in its window.
            models.Index(fields=["last_day"], name="activity_person_last"),
        ]

    def __str__(self) -> str:
        return f"{self.person_key} since {self.first_day}"


# A day's tail keeps this many of its last events: the most the churn page asks for.
TAIL_EVENTS = 20
# People are drawn for the churn page's sample by a hash of their key (`hashtext`, its top bits)
# into this many buckets (the PostgreSQL events store reads them by the same number).
SAMPLE_BUCKETS = POSTGRES_SAMPLE_BUCKETS


class ActivityFirstEvent(models.Model):
    """The first day (UTC) a person did an event name: the key-behaviour page's "did it within
    their first N days" is `first_day < signup day + N` (no event of theirs is before signup)."""

    pk = models.CompositePrimaryKey("person_key", "name")
    person_key = models.CharField(max_length=128)
    name = models.CharField(max_length=64)
    first_day = models.DateField()

    class Meta:
        db_table = "tracking_activityfirstevent"

    def __str__(self) -> str:
        return f"{self.person_key} first did {self.name} on {self.first_day}"


class ActivityGap(models.Model):
    """Activity rows (person-days) counted by their day and the person's next day of activity
    (9999-12-31 when there is none yet). The churn page's groups come from here: people active
    from `start` to `end` are the rows of those days whose next day is after `end`, churned those
    whose next day is also after `end + churn_days`."""

    NONE = date(9999, 12, 31)

    pk = models.CompositePrimaryKey("day", "next_day")
    day = models.DateField()
    next_day = models.DateField()
    users = models.IntegerField(default=0)

    class Meta:
        db_table = "tracking_activitygap"

    def __str__(self) -> str:
        return f"{self.users} active on {self.day}, next on {self.next_day}"


class ActivityTail(models.Model):
    """A person's last events of a day (at most `TAIL_EVENTS`, newest first: by timestamp, then
    id), for the churn page's last behaviours: a window's last N events are read from a person's
    last days in it. `bucket` (the top bits of `hashtext(person_key)`) draws the page's sample: it
    leads the key, so the people of the lowest hashes are one index range, and each one's days
    follow each other in it (a person's last days before a date are one short backward scan)."""

    pk = models.CompositePrimaryKey("bucket", "person_key", "day")
    bucket = models.SmallIntegerField()
    day = models.DateField()
    person_key = models.CharField(max_length=128)
    names = ArrayField(models.CharField(max_length=64))
    ats = ArrayField(models.DateTimeField())
    ids = ArrayField(models.BigIntegerField())

    class Meta:
        db_table = "tracking_activitytail"

    def __str__(self) -> str:
        return f"last events of {self.person_key} on {self.day}"


class DailyIndicator(models.Model):
    """The day's event-only indicators. WAU and MAU count the people active in the 7 and 30 days
    that end on the day; revenue is paid minus refunded amounts of the day's events."""

    day = models.DateField(primary_key=True)
    events = models.BigIntegerField(default=0)
    active_users = models.IntegerField(_("DAU"), default=0)
    weekly_active_users = models.IntegerField(_("WAU"), default=0)
    monthly_active_users = models.IntegerField(_("MAU"), default=0)
    new_users = models.IntegerField(default=0, help_text=_("People whose first activity was on the day."))
    orders = models.IntegerField(default=0)
    refunds = models.IntegerField(default=0)
    paid_amount = models.DecimalField(max_digits=20, decimal_places=2, default=0)
    refunded_amount = models.DecimalField(max_digits=20, decimal_places=2, default=0)
    revenue = models.DecimalField(max_digits=20, decimal_places=2, default=0)
    paying_users = models.IntegerField(default=0)
    repeat_buyers = models.IntegerField(
        default=0, help_text=_("Paying people of the day who had paid on an earlier day.")
    )
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "tracking_dailyindicator"
        verbose_name = _("indicator dashboard")
        verbose_name_plural = _("indicator dashboards")

    def __str__(self) -> str:
        return f"indicators of {self.day}"


class CohortBasis(models.TextChoices):
    ACTIVITY = "activity", _("First activity; retained when active")
    PURCHASE = "purchase", _("First order; retained when ordering")


class CohortGranularity(models.TextChoices):
    DAY = "day", _("Day")
    WEEK = "week", _("Week (Monday)")
    MONTH = "month", _("Month")


class RetentionCell(models.Model):
    """People of a cohort (those who started in the period beginning on `cohort`) still active
    (or ordering, by `basis`) `period` periods later; period 0 is the cohort's size. Daily
    cohorts keep periods 0 to 30."""

    pk = models.CompositePrimaryKey("basis", "granularity", "cohort", "period")
    basis = models.CharField(max_length=16, choices=CohortBasis.choices)
    granularity = models.CharField(max_length=8, choices=CohortGranularity.choices)
    cohort = models.DateField()
    period = models.IntegerField()
    users = models.IntegerField(default=0)

    class Meta:
        db_table = "tracking_retentioncell"

    def __str__(self) -> str:
        return f"{self.basis}/{self.granularity} cohort {self.cohort} period {self.period}: {self.users}"


class SearchDay(models.Model):
    """`search` events of a day by query (trimmed, lower case, at most 200 characters)."""

    pk = models.CompositePrimaryKey("day", "query")
    day = models.DateField()
    query = models.CharField(max_length=200)
    searches = models.IntegerField(default=0)
    zero_results = models.IntegerField(default=0, help_text=_("Searches whose `results` was 0 or empty."))

    class Meta:
        db_table = "tracking_searchday"

    def __str__(self) -> str:
        return f"{self.query!r} on {self.day}"


class SearchMonth(models.Model):
    """`SearchDay` summed by calendar month: the searches page reads a long window's whole months
    here and only the days at its ends from `SearchDay`."""

    pk = models.CompositePrimaryKey("month", "query")
    month = models.DateField(help_text=_("First day of the month"))
    query = models.CharField(max_length=200)
    searches = models.IntegerField(default=0)
    zero_results = models.IntegerField(default=0)

    class Meta:
        db_table = "tracking_searchmonth"

    def __str__(self) -> str:
        return f"{self.query!r} in {self.month:%Y-%m}"


class Funnel(models.Model):
    """Ordered steps an operator wants people to go through, e.g. view -> cart -> order.

    A person converts to step n when, after their step n-1, they do step n's event within
    `window_hours` of their first step."""

    name = models.CharField(max_length=120, unique=True)
    description = models.TextField(blank=True, default="")
    window_hours = models.PositiveIntegerField(
        default=24, help_text=_("Every later step must happen within this many hours of the first.")
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "tracking_funnel"
        constraints = [models.CheckConstraint(condition=models.Q(window_hours__gte=1), name="funnel_window_positive")]

    def __str__(self) -> str:
        return self.name


class FunnelStep(models.Model):
    funnel = models.ForeignKey(Funnel, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField(help_text=_("1 for the first step, then 2, 3, ..."))
    event_name = models.CharField(max_length=64)
    label = models.CharField(max_length=120, blank=True, default="")

    class Meta:
        db_table = "tracking_funnelstep"
        ordering = ["funnel", "position"]
        constraints = [models.UniqueConstraint(fields=["funnel", "position"], name="funnel_step_position_unique")]

    def __str__(self) -> str:
        return f"{self.position}. {self.label or self.event_name}"


# --- goals --------------------------------------------------------------------------------------
# A goal targets any indicator of the registry (`indicators.registry`) by its key; indicators of
# higher apps register themselves, so the goal itself never imports upwards.

GOAL_MIN_YEAR, GOAL_MAX_YEAR = 2000, 2200
GOAL_VALUE = {"max_digits": 20, "decimal_places": 4}


def goal_step(unit: str) -> Decimal:
    """The rounding step of a goal's values: cents for money, counts and users; four places for
    ratios such as a retention rate."""
    return Decimal("0.0001") if unit == Unit.RATIO else Decimal("0.01")


class GoalPeriod(models.TextChoices):
    YEAR = "year", _("Year")
    QUARTER = "quarter", _("Quarter")


class GoalProfile(models.TextChoices):
    """How a goal is spread over its months."""

    EVEN = "even", _("Evenly")
    WEIGHTS = "weights", _("By typed weights per month")
    LAST_YEAR = "last_year", _("Shaped like last year's actuals")


class Goal(models.Model):
    """A yearly or quarterly target on one indicator, decomposed into monthly targets.

    `fold` is copied from the indicator when the goal is set, so the meaning of the month targets
    stays fixed: for a sum-type indicator (revenue) the months share the target and add up to it;
    for a mean-type (DAU) or last-value one (MAU) each month's target is a level to reach, and the
    months' levels average (mean, weighted by days) or end (last) at the goal's target. The
    database checks this at commit (a deferred constraint trigger, migration `0004_goals`).
    """

    name = models.CharField(max_length=200)
    indicator = models.CharField(max_length=64, help_text=_("Key of a registered indicator, e.g. dau"))
    fold = models.CharField(max_length=8, choices=Fold.choices, editable=False)
    unit = models.CharField(max_length=8, choices=Unit.choices, editable=False)
    period = models.CharField(max_length=8, choices=GoalPeriod.choices)
    year = models.PositiveSmallIntegerField()
    quarter = models.PositiveSmallIntegerField(null=True, blank=True, help_text=_("1 to 4 for a quarterly goal"))
    target = models.DecimalField(**GOAL_VALUE)
    profile = models.CharField(max_length=16, choices=GoalProfile.choices, default=GoalProfile.EVEN)
    weights = models.JSONField(default=list, blank=True, help_text=_("The weights per month the operator typed"))
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )

    class Meta:
        db_table = "tracking_goal"
        ordering = ["-year", "-quarter", "name"]
        constraints = [
            models.CheckConstraint(condition=models.Q(target__gt=0), name="goal_target_positive"),
            models.CheckConstraint(
                condition=models.Q(year__gte=GOAL_MIN_YEAR, year__lte=GOAL_MAX_YEAR), name="goal_year_in_range"
            ),
            models.CheckConstraint(
                condition=models.Q(period=GoalPeriod.YEAR, quarter__isnull=True)
                | models.Q(period=GoalPeriod.QUARTER, quarter__gte=1, quarter__lte=4),
                name="goal_period_valid",
            ),
            models.CheckConstraint(condition=models.Q(fold__in=Fold.values), name="goal_fold_known"),
            models.CheckConstraint(condition=models.Q(profile__in=GoalProfile.values), name="goal_profile_known"),
            # One goal per indicator and period (a yearly and a quarterly goal may coexist).
            models.UniqueConstraint(
                fields=["indicator", "period", "year", "quarter"], name="goal_one_per_period", nulls_distinct=False
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.period_label})"

    @property
    def period_label(self) -> str:
        return f"{self.year}" if self.period == GoalPeriod.YEAR else f"{self.year} Q{self.quarter}"

    @property
    def first_month(self) -> int:
        return 1 if self.period == GoalPeriod.YEAR else 3 * (self.quarter - 1) + 1

    @property
    def month_count(self) -> int:
        return 12 if self.period == GoalPeriod.YEAR else 3

    @property
    def start(self) -> date:
        return date(self.year, self.first_month, 1)

    @property
    def end(self) -> date:
        """The last day of the period."""
        last = self.first_month + self.month_count - 1
        return date(self.year, last, calendar.monthrange(self.year, last)[1])

    def months(self) -> list[date]:
        return [date(self.year, self.first_month + i, 1) for i in range(self.month_count)]


class GoalMonth(models.Model):
    """One month of a goal: its share of the weights and its target (a share of the goal for a
    sum-type indicator, a level for a mean- or last-type one)."""

    goal = models.ForeignKey(Goal, on_delete=models.CASCADE, related_name="month_targets")
    month = models.DateField(help_text=_("First day of the month"))
    weight = models.DecimalField(max_digits=20, decimal_places=6)
    target = models.DecimalField(**GOAL_VALUE)

    class Meta:
        db_table = "tracking_goalmonth"
        ordering = ["goal", "month"]
        constraints = [
            models.UniqueConstraint(fields=["goal", "month"], name="goalmonth_one_per_month"),
            models.CheckConstraint(condition=models.Q(month__day=1), name="goalmonth_first_of_month"),
            models.CheckConstraint(condition=models.Q(target__gte=0), name="goalmonth_target_gte_0"),
            models.CheckConstraint(condition=models.Q(weight__gte=0), name="goalmonth_weight_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.goal_id} {self.month:%Y-%m}: {self.target}"


# --- anomaly alerts -------------------------------------------------------------------------------
# Written by `indicators.anomalies` (the checks) and `indicators.services` (acknowledge, mute,
# sensitivity, notifications).


class Sensitivity(models.TextChoices):
    LOW = "low", _("Low (only large moves)")
    NORMAL = "normal", _("Normal")
    HIGH = "high", _("High (smaller moves too)")


# The expected range is expected +/- k robust standard deviations (`indicators.anomalies`); these
# k were chosen with `bench/anomalies.py` (normal: precision and recall >= 0.9 there).
SENSITIVITY_K = {Sensitivity.LOW: 6.0, Sensitivity.NORMAL: 4.5, Sensitivity.HIGH: 3.5}


class IndicatorWatch(models.Model):
    """An operator's setting of one indicator's checks: muted, or more or less sensitive. An
    indicator without a row is checked at normal sensitivity. `event_volume` is the hourly check
    of the events stored."""

    indicator = models.CharField(
        max_length=64, unique=True, help_text=_("Key of a registered indicator, or event_volume")
    )
    muted = models.BooleanField(default=False, help_text=_("Muted indicators are not checked."))
    sensitivity = models.CharField(max_length=8, choices=Sensitivity.choices, default=Sensitivity.NORMAL)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )

    class Meta:
        verbose_name = _("indicator watch setting")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(sensitivity__in=Sensitivity.values), name="watch_sensitivity_known"
            )
        ]

    def __str__(self) -> str:
        return f"{self.indicator}: {'muted' if self.muted else self.sensitivity}"


class AlertRecipient(models.Model):
    """Where alerts go, kept by operators in the admin, besides the deployment's own
    `OPSLOOP_ALERT_EMAILS` and `OPSLOOP_ALERT_WEBHOOK_URL`: an e-mail address or a webhook URL
    (whose host must be one the deployment allows, `OPSLOOP_GATEWAY_ALLOWED_HOSTS`)."""

    class Kind(models.TextChoices):
        EMAIL = "email", _("E-mail")
        WEBHOOK = "webhook", _("Webhook")

    kind = models.CharField(max_length=8, choices=Kind.choices)
    address = models.CharField(max_length=500, help_text=_("An e-mail address, or the webhook's http(s) URL"))
    active = models.BooleanField(default=True, help_text=_("Inactive recipients get nothing."))
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )

    class Meta:
        ordering = ["kind", "address"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "address"], name="alert_recipient_once"),
            models.CheckConstraint(
                condition=models.Q(kind__in=["email", "webhook"]), name="alert_recipient_kind_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.address}"


class CheckKind(models.TextChoices):
    DAILY = "daily", _("Daily (every indicator)")
    HOURLY = "hourly", _("Hourly (event volume)")


class AnomalyCheckRun(models.Model):
    """One check of the indicators for one day (or of event volume for one hour): the beat queues
    it, a worker runs it; a failure stays visible here with its reason until retried."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    kind = models.CharField(max_length=8, choices=CheckKind.choices)
    period_start = models.DateTimeField(help_text=_("The day (UTC midnight) or hour checked"))
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED)
    requested_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    indicators_checked = models.PositiveIntegerField(default=0)
    alerts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-period_start", "kind"]
        constraints = [models.UniqueConstraint(fields=["kind", "period_start"], name="anomaly_check_once_per_period")]

    def __str__(self) -> str:
        return f"{self.kind} check of {self.period_start:%Y-%m-%d %H:%M} ({self.status})"


class NotifyStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SENT = "sent", _("Sent")
    FAILED = "failed", _("Failed")
    SKIPPED = "skipped", _("Not configured")


class AlertStatus(models.TextChoices):
    NEW = "new", _("New")
    ACKNOWLEDGED = "acknowledged", _("Acknowledged")


class Anomaly(models.Model):
    """An alert: an indicator's value outside its expected range on a day (or event volume in an
    hour), with the traffic sources that moved most."""

    run = models.ForeignKey(AnomalyCheckRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="anomalies")
    indicator = models.CharField(max_length=64)
    granularity = models.CharField(max_length=8, choices=CheckKind.choices)
    period_start = models.DateTimeField()
    value = models.DecimalField(**GOAL_VALUE)
    expected = models.DecimalField(**GOAL_VALUE)
    low = models.DecimalField(**GOAL_VALUE)
    high = models.DecimalField(**GOAL_VALUE)
    score = models.FloatField(help_text=_("Distance from the expected value in robust standard deviations"))
    direction = models.CharField(max_length=8, choices=[("spike", _("Spike")), ("drop", _("Drop"))])
    movers = models.JSONField(default=list, blank=True, help_text=_("The traffic sources that moved most"))
    status = models.CharField(max_length=16, choices=AlertStatus.choices, default=AlertStatus.NEW)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.TextField(blank=True, default="")
    email_status = models.CharField(max_length=8, choices=NotifyStatus.choices, default=NotifyStatus.PENDING)
    webhook_status = models.CharField(max_length=8, choices=NotifyStatus.choices, default=NotifyStatus.PENDING)
    notify_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("anomaly alert")
        ordering = ["-period_start", "indicator"]
        constraints = [
            models.UniqueConstraint(fields=["indicator", "granularity", "period_start"], name="anomaly_once_per_point"),
            models.CheckConstraint(condition=models.Q(low__lte=models.F("high")), name="anomaly_range_ordered"),
        ]
        indexes = [models.Index(fields=["status", "-period_start"], name="anomaly_status_time")]

    def __str__(self) -> str:
        return f"{self.indicator} {self.direction} at {self.period_start:%Y-%m-%d %H:%M}"
