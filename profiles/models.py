"""Profiles (one per person), the identities that resolve events to them, and their tags."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils.timezone import now
from django.utils.translation import gettext_lazy as _


class Gender(models.TextChoices):
    UNKNOWN = "", _("Unknown")
    FEMALE = "female", _("Female")
    MALE = "male", _("Male")
    OTHER = "other", _("Other")


class Profile(models.Model):
    """A person, named by the product's `user_id`. Known traits are columns; others live in
    `traits`. A profile merged into another keeps its row with `merged_into` set, so an old
    `user_id` still leads to the person."""

    user_id = models.CharField(max_length=128, unique=True)
    name = models.CharField(max_length=200, blank=True, default="")
    gender = models.CharField(max_length=16, choices=Gender.choices, blank=True, default="")
    birth_date = models.DateField(null=True, blank=True)
    region = models.CharField(max_length=100, blank=True, default="")
    city = models.CharField(max_length=100, blank=True, default="")
    timezone = models.CharField(max_length=64, blank=True, default="", help_text=_("IANA name"))
    phone = models.CharField(max_length=32, blank=True, default="", help_text=_("E.164"))
    email = models.EmailField(blank=True, default="")
    signup_at = models.DateTimeField(null=True, blank=True)
    push_opt_in = models.BooleanField(default=False)
    sms_opt_in = models.BooleanField(default=False)
    email_opt_in = models.BooleanField(default=False)
    traits = models.JSONField(default=dict, blank=True, help_text=_("Custom traits"))
    # When each trait (known or custom) was last set, so a merge keeps the more recent value.
    trait_updated_at = models.JSONField(default=dict, blank=True, editable=False)
    first_seen_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(auto_now=True)
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="merged_profiles"
    )

    class Meta:
        indexes = [
            models.Index(fields=["phone"], name="profile_phone", condition=~models.Q(phone="")),
            models.Index(fields=["email"], name="profile_email", condition=~models.Q(email="")),
            models.Index(fields=["signup_at"], name="profile_signup"),
            models.Index(fields=["city"], name="profile_city", condition=~models.Q(city="")),
        ]
        permissions = [
            ("lookup_profile", "May look up a caller's profile (customer service)"),
            ("see_personal_data", "May see unmasked phone numbers and e-mail addresses"),
        ]

    def __str__(self) -> str:
        return self.user_id


class SeenBacklog(models.Model):
    """Stored events whose first/last seen is not applied to their profiles yet: one run of
    consecutive event ids (`first_event_id` to `last_event_id`, all stored by one ingestion
    batch) per row.

    Ingestion writes the row in its own transaction and `update_seen_times` deletes it in the
    transaction that applies it, so every stored event is either here or already applied: a
    crash on either side loses and skips nothing, unlike a cursor over event ids, which would
    pass over a batch that reserved lower ids but committed later. Keeping this upkeep out of
    ingestion spares each batch an UPDATE of almost every profile it names; the profiles a
    batch creates get their first/last seen at once."""

    first_event_id = models.BigIntegerField()
    last_event_id = models.BigIntegerField()
    created_at = models.DateTimeField(default=now)

    class Meta:
        verbose_name = _("first/last seen backlog run")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(last_event_id__gte=models.F("first_event_id")), name="seen_backlog_run_order"
            )
        ]

    def __str__(self) -> str:
        return f"events {self.first_event_id}-{self.last_event_id}"


class IdentityKind(models.TextChoices):
    USER_ID = "user_id", _("User id")
    ANONYMOUS_ID = "anonymous_id", _("Anonymous id")
    PHONE = "phone", _("Phone")
    EMAIL = "email", _("E-mail")
    OPENID = "openid", _("OpenID")
    UNIONID = "unionid", _("UnionID")
    DEVICE = "device", _("Device")
    COOKIE = "cookie", _("Cookie")


class Identity(models.Model):
    """One identifier of a person. `(kind, value)` is unique: an identifier belongs to one
    profile at a time; claiming it for another profile merges the two."""

    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="identities")
    kind = models.CharField(max_length=16, choices=IdentityKind.choices)
    value = models.CharField(max_length=256)
    created_at = models.DateTimeField(default=now)

    class Meta:
        verbose_name_plural = _("identities")
        constraints = [models.UniqueConstraint(fields=["kind", "value"], name="identity_kind_value_unique")]
        indexes = [models.Index(fields=["value"], name="identity_value")]

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


class ProfileMerge(models.Model):
    """Record of one profile merged into another (by `identify`)."""

    into = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="merges")
    merged = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    merged_user_id = models.CharField(max_length=128)
    reason = models.CharField(max_length=300, blank=True, default="")
    at = models.DateTimeField(default=now)

    def __str__(self) -> str:
        return f"{self.merged_user_id} -> {self.into.user_id}"


class ProfileEvent(models.Model):
    """Read-only view: every event with the profile it belongs to *now* (through identities).

    This is the one join every analysis uses: `user_id` identity first, else `anonymous_id`.
    Events of a merged profile follow it without being rewritten. PostgreSQL inlines the view,
    so filters on `name` and `timestamp` still use the event indexes.
    """

    event_id = models.UUIDField()
    name = models.CharField(max_length=64)
    kind = models.CharField(max_length=16)
    timestamp = models.DateTimeField()
    received_at = models.DateTimeField()
    user_id = models.CharField(max_length=128, null=True)
    anonymous_id = models.CharField(max_length=128, null=True)
    properties = models.JSONField()
    url = models.TextField()
    path = models.TextField()
    referrer = models.TextField()
    utm_source = models.CharField(max_length=128)
    utm_medium = models.CharField(max_length=128)
    utm_campaign = models.CharField(max_length=128)
    device = models.CharField(max_length=64)
    os = models.CharField(max_length=64)
    profile = models.ForeignKey(Profile, null=True, on_delete=models.DO_NOTHING, related_name="events")

    class Meta:
        managed = False
        db_table = "profiles_profileevent"

    def __str__(self) -> str:
        return f"{self.name} of {self.profile_id} @ {self.timestamp:%Y-%m-%d %H:%M}"


class TagSource(models.TextChoices):
    MANUAL = "manual", _("Manual")
    RULE = "rule", _("Rule")
    STATISTICAL = "statistical", _("Statistical")
    IMPORT = "import", _("Import")
    CAMPAIGN = "campaign", _("Campaign feedback")


class Tag(models.Model):
    """A label operators target by, e.g. `prefers_technology` in category `preference`."""

    name = models.SlugField(max_length=100, unique=True)
    category = models.CharField(max_length=64, blank=True, default="")
    description = models.TextField(blank=True, default="")
    source = models.CharField(max_length=16, choices=TagSource.choices, default=TagSource.MANUAL)
    rule = models.ForeignKey(
        "TagRule",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tags",
        help_text=_("The rule that computes this tag's members; empty for manual and imported tags."),
    )
    created_at = models.DateTimeField(default=now)
    computed_at = models.DateTimeField(null=True, blank=True, help_text=_("When its members were last computed"))

    class Meta:
        ordering = ["category", "name"]

    def __str__(self) -> str:
        return self.name


class ProfileTag(models.Model):
    """A profile carrying a tag, with how sure we are and where it came from."""

    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="profile_tags")
    tag = models.ForeignKey(Tag, on_delete=models.CASCADE, related_name="profile_tags")
    score = models.FloatField(null=True, blank=True, help_text=_("Confidence or effect size"))
    source = models.CharField(max_length=16, choices=TagSource.choices, default=TagSource.MANUAL)
    computed_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["profile", "tag"], name="profiletag_unique")]
        indexes = [models.Index(fields=["tag", "profile"], name="profiletag_tag_profile")]

    def __str__(self) -> str:
        return f"{self.profile_id}:{self.tag_id}"


class TagRuleKind(models.TextChoices):
    RULE = "rule", _("Rule (conditions on traits and event counts)")
    PREFERENCE = "preference", _("Preference (chi-square on a category property)")


class TagRunStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")


class TagRule(models.Model):
    """How a computed tag is derived, defined by operators and recomputed nightly.

    A *rule* tags every live profile matching all `conditions`, e.g.
    `[{"event": "order_paid", "within_days": 30, "op": "gte", "count": 3},
      {"trait": "city", "op": "in", "value": ["Shanghai", "Beijing"]}]`.
    A *preference* rule reads `event_name` events of the last `window_days`, takes
    `properties[category_property]` as a category, and tags a user `<tag_prefix><category>` when
    they chose that category significantly more often than the population (chi-square goodness of
    fit of their counts against the population's shares, `p < p_value_threshold`, at least
    `min_count` events in that category); the score is the effect size (Cohen's w).
    """

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=TagRuleKind.choices, default=TagRuleKind.RULE)
    is_active = models.BooleanField(default=True, help_text=_("Inactive rules are skipped by the nightly run"))
    description = models.TextField(blank=True, default="")
    tag_name = models.SlugField(
        max_length=100, blank=True, default="", help_text=_("Rule kind: the tag it maintains (created if new)")
    )
    tag_category = models.CharField(max_length=64, blank=True, default="")
    conditions = models.JSONField(default=list, blank=True, help_text=_("Rule kind: conditions, all must hold"))
    event_name = models.CharField(max_length=64, blank=True, default="", help_text=_("Preference kind"))
    category_property = models.CharField(max_length=64, blank=True, default="category")
    window_days = models.PositiveIntegerField(default=90)
    min_count = models.PositiveIntegerField(default=5, help_text=_("Least events of a user in the category"))
    p_value_threshold = models.FloatField(default=0.01)
    tag_prefix = models.SlugField(max_length=40, blank=True, default="prefers_")
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_run_members = models.PositiveIntegerField(null=True, blank=True, editable=False)
    last_run_seconds = models.FloatField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, default="", editable=False)
    # Blank until the first run; "failed" stays until a run succeeds (the nightly one or a retry).
    last_status = models.CharField(
        max_length=16, choices=TagRunStatus.choices, blank=True, default="", editable=False, db_index=True
    )
    created_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from profiles.rules import validate_rule

        validate_rule(self)


class TagChangeAction(models.TextChoices):
    ADDED = "added", _("Added")
    REMOVED = "removed", _("Removed")


class TagChange(models.Model):
    """A profile gaining or losing a tag: the history behind "became a fan this week"."""

    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="tag_changes")
    tag = models.ForeignKey(Tag, on_delete=models.CASCADE, related_name="changes")
    action = models.CharField(max_length=8, choices=TagChangeAction.choices)
    source = models.CharField(max_length=16, choices=TagSource.choices, default=TagSource.MANUAL)
    at = models.DateTimeField(default=now)

    class Meta:
        indexes = [
            models.Index(fields=["tag", "at"], name="tagchange_tag_at"),
            models.Index(fields=["profile", "tag", "at"], name="tagchange_profile_tag_at"),
        ]

    def __str__(self) -> str:
        return f"{self.tag_id} {self.action} {self.profile_id} @ {self.at:%Y-%m-%d %H:%M}"


class LookupChannel(models.TextChoices):
    API = "api", _("API")
    ADMIN = "admin", _("Admin page")


class LookupRecord(models.Model):
    """One customer-service lookup: who searched, when, for what, and which profiles they saw."""

    staff = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="profile_lookups"
    )
    staff_username = models.CharField(max_length=150, blank=True, default="")
    at = models.DateTimeField(default=now, db_index=True)
    query = models.CharField(max_length=200)
    channel = models.CharField(max_length=8, choices=LookupChannel.choices, default=LookupChannel.API)
    refused = models.CharField(max_length=200, blank=True, default="", help_text=_("Why the query was refused"))
    profile_ids = ArrayField(models.BigIntegerField(), default=list, blank=True)
    user_ids = ArrayField(models.CharField(max_length=128), default=list, blank=True)
    saw_personal_data = models.BooleanField(default=False)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.staff_username} looked up {self.query!r} @ {self.at:%Y-%m-%d %H:%M}"


class SegmentRejection(models.Model):
    """A message of the Segment tracking API that was refused, with its reasons: the last ones
    of each key are kept (`profiles.segment.REJECTIONS_KEPT_PER_KEY`), because Segment's
    libraries ignore the replies and an integrator's mistake must show somewhere."""

    api_key = models.ForeignKey("access.ApiKey", on_delete=models.CASCADE, related_name="+")
    at = models.DateTimeField(default=now, db_index=True)
    index = models.PositiveIntegerField(help_text=_("Position of the message in its request."))
    message_type = models.CharField(max_length=16, blank=True)
    message_id = models.CharField(max_length=256, blank=True)
    errors = models.JSONField(default=dict)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["api_key", "-id"], name="segmentrejection_key_id")]

    def __str__(self) -> str:
        return f"{self.message_type or 'message'} {self.message_id or self.index}"
