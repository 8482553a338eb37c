"""Communities: operators' contact accounts and groups, who is in them, and how operators and
teams contribute (monthly composite scores)."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from profiles.models import Profile
from tracking.validation import COMMUNITY_ID_PROPERTIES

# The ingestion events that keep communities. Which id each must carry (a contact is made with an
# account, the others happen in a group) has one home: the event validator, which refuses them.
CONTACT_ADDED = "community_contact_added"
JOINED = "community_joined"
LEFT = "community_left"
MESSAGE = "community_message"
REQUIRED_PROPERTY = COMMUNITY_ID_PROPERTIES
COMMUNITY_EVENTS = frozenset(REQUIRED_PROPERTY)


class OperatorAccount(models.Model):
    """A WeChat / WeCom contact account that customers add. `operator` is empty while nobody has
    assigned it: events may name an account before an admin knows whose it is."""

    external_id = models.CharField(max_length=128, unique=True, help_text=_("The account id events carry"))
    name = models.CharField(max_length=200, blank=True, default="")
    operator = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="community_accounts",
        limit_choices_to={"is_staff": True},
    )
    first_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["external_id"]
        verbose_name = _("operator account")

    def __str__(self) -> str:
        return self.name or self.external_id


class CommunityGroup(models.Model):
    """A customer group (chat group) run by an operator; unassigned while `operator` is empty."""

    external_id = models.CharField(max_length=128, unique=True, help_text=_("The group id events carry"))
    name = models.CharField(max_length=200, blank=True, default="")
    operator = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="community_groups",
        limit_choices_to={"is_staff": True},
    )
    first_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["external_id"]
        verbose_name = _("community group")

    def __str__(self) -> str:
        return self.name or self.external_id


class Contact(models.Model):
    """A person who added an operator's account: when first, and through which channel."""

    account = models.ForeignKey(OperatorAccount, on_delete=models.CASCADE, related_name="contacts")
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="community_contacts")
    added_at = models.DateTimeField()
    channel = models.CharField(max_length=64, blank=True, default="", help_text=_("properties.channel of the event"))

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "profile"], name="community_contact_once")]
        indexes = [models.Index(fields=["profile", "added_at"], name="community_contact_profile")]

    def __str__(self) -> str:
        return f"{self.profile_id} -> {self.account_id}"


class Membership(models.Model):
    """A person's membership of one group: current state (from the latest join or leave by event
    time, so late events do not flip it back), counts and message activity."""

    group = models.ForeignKey(CommunityGroup, on_delete=models.CASCADE, related_name="memberships")
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="community_memberships")
    is_member = models.BooleanField(default=False)
    state_at = models.DateTimeField(null=True, blank=True, help_text=_("Time of the join or leave that set the state"))
    first_joined_at = models.DateTimeField(null=True, blank=True)
    joins = models.PositiveIntegerField(default=0)
    leaves = models.PositiveIntegerField(default=0)
    messages = models.PositiveIntegerField(default=0)
    first_message_at = models.DateTimeField(null=True, blank=True)
    last_message_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["group", "profile"], name="community_membership_once")]
        indexes = [models.Index(fields=["profile"], name="community_membership_profile")]

    def __str__(self) -> str:
        return f"{self.profile_id} in {self.group_id}"


class MembershipChange(models.Model):
    """Join / leave history, one row per event (the event id keeps a replay from doubling it)."""

    class Action(models.TextChoices):
        JOINED = "joined", _("Joined")
        LEFT = "left", _("Left")

    group = models.ForeignKey(CommunityGroup, on_delete=models.CASCADE, related_name="changes")
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    action = models.CharField(max_length=8, choices=Action.choices)
    at = models.DateTimeField()
    event_id = models.UUIDField(unique=True)

    class Meta:
        indexes = [models.Index(fields=["group", "at"], name="community_change_group_at")]

    def __str__(self) -> str:
        return f"{self.profile_id} {self.action} {self.group_id} @ {self.at:%Y-%m-%d %H:%M}"


class MemberActivity(models.Model):
    """Messages of one person in one group on one day (UTC): activity and volume without
    re-reading the events."""

    group = models.ForeignKey(CommunityGroup, on_delete=models.CASCADE, related_name="activity")
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    messages = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name_plural = _("member activity")
        constraints = [models.UniqueConstraint(fields=["group", "profile", "day"], name="community_activity_once")]
        indexes = [models.Index(fields=["profile", "day"], name="community_activity_profile")]

    def __str__(self) -> str:
        return f"{self.profile_id} in {self.group_id} on {self.day}: {self.messages}"


class AppliedCommunityEvent(models.Model):
    """The community events already applied (by event id), so that a replay (`rebuild`) or a
    redelivered batch never counts a message twice."""

    event_id = models.UUIDField(primary_key=True)

    def __str__(self) -> str:
        return str(self.event_id)


class CampaignCredit(models.Model):
    """Which operator a campaign's incremental result is credited to. Without a row the staff
    member who launched it (audit log) is credited."""

    campaign = models.OneToOneField("campaigns.Campaign", on_delete=models.CASCADE, related_name="+")
    operator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", limit_choices_to={"is_staff": True}
    )

    def __str__(self) -> str:
        return f"{self.campaign_id} -> {self.operator_id}"


class Dimension(models.TextChoices):
    CAMPAIGN_INCREMENTAL = "campaign_incremental", _("Campaign results against holdouts")
    COMMUNITY_QUALITY = "community_quality", _("Community quality")
    NEW_MEMBERS = "new_members", _("New members attracted")
    CONTACT_TRANSACTIONS = "contact_transactions", _("Transaction amount of contacts")


class ScoreDimension(models.Model):
    """One weighted dimension of the contribution score; operators edit the weights."""

    key = models.CharField(max_length=32, choices=Dimension.choices, unique=True)
    weight = models.DecimalField(
        max_digits=6,
        decimal_places=2,
        default=Decimal("1.00"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("1000"))],
        help_text=_("Relative weight; 0 leaves the dimension out"),
    )
    description = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["key"]
        constraints = [models.CheckConstraint(condition=models.Q(weight__gte=0), name="score_dimension_weight_gte_0")]

    def __str__(self) -> str:
        return self.get_key_display()


class ScoreRun(models.Model):
    """One computation of a month's contribution scores, nightly or on demand."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    month = models.DateField(help_text=_("First day of the month scored"))
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    operators = models.PositiveIntegerField(default=0)
    teams = models.PositiveIntegerField(default=0)
    weights = models.JSONField(default=dict, blank=True, help_text=_("The weights the run used"))
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-requested_at"]
        constraints = [models.CheckConstraint(condition=models.Q(month__day=1), name="score_run_month_first_day")]

    def __str__(self) -> str:
        return f"Scores {self.month:%Y-%m} run {self.pk} ({self.status})"


class ScoreSubject(models.TextChoices):
    OPERATOR = "operator", _("Operator")
    TEAM = "team", _("Team")


class ContributionScore(models.Model):
    """The composite score of one operator or team for one month, with its breakdown: raw value,
    percentile among peers and weight per dimension, and the sources behind each raw value."""

    run = models.ForeignKey(ScoreRun, on_delete=models.CASCADE, related_name="scores")
    month = models.DateField()
    subject = models.CharField(max_length=8, choices=ScoreSubject.choices)
    operator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    team = models.ForeignKey(Group, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    members = models.PositiveIntegerField(default=1, help_text=_("Team members (1 for an operator)"))
    score = models.DecimalField(max_digits=6, decimal_places=2, help_text=_("0-100, weighted mean of percentiles"))
    rank = models.PositiveIntegerField()
    breakdown = models.JSONField(default=dict)
    sources = models.JSONField(default=dict)

    class Meta:
        ordering = ["-month", "subject", "rank"]
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(subject="operator", operator__isnull=False, team__isnull=True))
                | (models.Q(subject="team", team__isnull=False, operator__isnull=True)),
                name="contribution_score_one_subject",
            ),
            models.UniqueConstraint(fields=["month", "operator"], name="contribution_score_operator_month"),
            models.UniqueConstraint(fields=["month", "team"], name="contribution_score_team_month"),
        ]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} {self.subject_name}: {self.score}"

    @property
    def subject_name(self) -> str:
        if self.subject == ScoreSubject.TEAM:
            return self.team.name if self.team_id else "?"
        return self.operator.get_username() if self.operator_id else "?"
