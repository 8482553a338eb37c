"""What operators and customer service see of people, identities, tags and tag rules."""

from __future__ import annotations

from datetime import UTC, date, datetime

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import BooleanField, Count, Q, Value
from django.template.loader import select_template
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from import_export import fields, resources, widgets
from import_export.admin import ImportExportModelAdmin

from access.readonly import ReadOnlyAdmin
from profiles import selectors, services
from profiles.models import (
    Identity,
    LookupChannel,
    LookupRecord,
    Profile,
    ProfileMerge,
    ProfileTag,
    SegmentRejection,
    Tag,
    TagChange,
    TagRule,
    TagSource,
)
from profiles.normalize import mask_email, mask_phone, normalize_email, normalize_phone


def may_see_personal_data(request) -> bool:
    return request.user.has_perm("profiles.see_personal_data")


# --- profiles -------------------------------------------------------------------------------


class TagFilter(admin.SimpleListFilter):
    title = _("tag")
    parameter_name = "tag"

    def lookups(self, request, model_admin):
        return [(t.name, f"{t.name} ({t.category})" if t.category else t.name) for t in Tag.objects.all()[:200]]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(profile_tags__tag__name=self.value())
        return queryset


class CityFilter(admin.SimpleListFilter):
    title = _("city")
    parameter_name = "city"

    def lookups(self, request, model_admin):
        # The most common cities, counted at most every ten minutes: counting a million profiles
        # on every page of the list would make the list slow.
        cities = cache.get("profiles:admin:top-cities")
        if cities is None:
            cities = list(
                Profile.objects.exclude(city="")
                .values("city")
                .annotate(n=Count("id"))
                .order_by("-n")
                .values_list("city", flat=True)[:30]
            )
            cache.set("profiles:admin:top-cities", cities, 600)
        selected = self.value()
        if selected and selected not in cities:
            cities = [*cities, selected]
        return [(c, c) for c in cities]

    def queryset(self, request, queryset):
        return queryset.filter(city=self.value()) if self.value() else queryset


class SignupMonthFilter(admin.SimpleListFilter):
    title = _("signup month")
    parameter_name = "signup_month"

    def lookups(self, request, model_admin):
        today = date.today()
        months = []
        year, month = today.year, today.month
        for _month in range(24):
            months.append((f"{year:04d}-{month:02d}", f"{year:04d}-{month:02d}"))
            year, month = (year, month - 1) if month > 1 else (year - 1, 12)
        return months

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        try:
            year, month = (int(x) for x in self.value().split("-"))
            start = datetime(year, month, 1, tzinfo=UTC)
        except ValueError:
            return queryset.none()
        end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
        return queryset.filter(signup_at__gte=start, signup_at__lt=end)


class MergedFilter(admin.SimpleListFilter):
    title = _("merged")
    parameter_name = "merged"

    def lookups(self, request, model_admin):
        return [("no", _("Live profiles")), ("yes", _("Merged into another"))]

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.filter(merged_into__isnull=True)
        if self.value() == "yes":
            return queryset.filter(merged_into__isnull=False)
        return queryset


# Whether the rows' viewer may see personal data travels with the rows (a constant annotation of
# the request's queryset), never on the ModelAdmin: one instance serves every request at once, and
# a request stored on it would let one viewer's rights unmask another's page.
SEES = "viewer_sees_personal_data"


def _for_viewer(queryset, request):
    return queryset.annotate(**{SEES: Value(may_see_personal_data(request), output_field=BooleanField())})


def _sees(obj) -> bool:
    return bool(getattr(obj, SEES, False))  # rows read any other way stay masked


def _shown_identity(obj: Identity) -> str:
    if _sees(obj):
        return obj.value
    return {"phone": mask_phone, "email": mask_email}.get(obj.kind, lambda v: v)(obj.value)


class IdentityInline(admin.TabularInline):
    model = Identity
    extra = 0
    fields = ["kind", "shown_value", "created_at"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # identities change through identify, which merges correctly

    @admin.display(description=_("value"))
    def shown_value(self, obj: Identity) -> str:
        return _shown_identity(obj)

    def get_queryset(self, request):
        return _for_viewer(super().get_queryset(request), request)


class ProfileTagInline(admin.TabularInline):
    model = ProfileTag
    extra = 0
    fields = ["tag", "score", "source", "computed_at"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # use the list actions, which record the change history


class TagActionForm(ActionForm):
    tag_name = forms.SlugField(required=False, label=_("Tag"), help_text=_("for the tag actions"))


PERSONAL_FIELDS = ("phone", "email")


# What an agent needs first: who this is to us, then what they hold, then what we sent them.
LOOKUP_CARD_ORDER = ("value", "predictions", "coupons", "messages")


def _card_place(name: str) -> tuple[int, str]:
    return (LOOKUP_CARD_ORDER.index(name) if name in LOOKUP_CARD_ORDER else len(LOOKUP_CARD_ORDER), name)


def _lookup_card(profile: Profile, view: dict) -> dict:
    """The lookup's view of one person as the page draws it: the summary line an agent reads out,
    and each section through the template its app provides (`admin/lookup/<section>.html`: crm
    draws the value card, coupons and campaigns their tables), else as labelled fields."""
    from profiles.lookup import summary_for

    sections = [
        {
            "name": name,
            "data": data,
            "template": select_template([f"admin/lookup/{name}.html", "admin/lookup/section.html"]),
        }
        for name, data in sorted(view.get("sections", {}).items(), key=lambda item: _card_place(item[0]))
    ]
    return {**view, "summary": summary_for(profile), "cards": sections}


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ["user_id", "name", "shown_phone", "city", "gender", "signup_at", "last_seen_at", "merged_into"]
    list_filter = [TagFilter, CityFilter, "gender", SignupMonthFilter, MergedFilter]
    search_fields = ["=user_id"]
    search_help_text = _("Exact user id, phone (any format), e-mail or identity value.")
    list_select_related = ["merged_into"]
    raw_id_fields = ["merged_into"]
    readonly_fields = ["first_seen_at", "last_seen_at", "created_at", "updated_at", "merged_into", "trait_updated_at"]
    inlines = [IdentityInline, ProfileTagInline]
    action_form = TagActionForm
    actions = ["add_tag", "remove_tag"]
    show_full_result_count = False  # no count(*) over a million rows on every page
    change_list_template = "admin/profiles/profile/change_list.html"

    def get_exclude(self, request, obj=None):
        return [] if may_see_personal_data(request) else list(PERSONAL_FIELDS)

    def get_readonly_fields(self, request, obj=None):
        extra = [] if may_see_personal_data(request) else ["shown_phone", "shown_email"]
        return [*self.readonly_fields, *extra]

    @admin.display(description=_("phone"))
    def shown_phone(self, obj: Profile) -> str:
        return obj.phone if _sees(obj) else mask_phone(obj.phone)

    @admin.display(description=_("e-mail"))
    def shown_email(self, obj: Profile) -> str:
        return obj.email if _sees(obj) else mask_email(obj.email)

    def get_queryset(self, request):
        return _for_viewer(super().get_queryset(request), request)

    def get_search_results(self, request, queryset, search_term):
        """Exact matches on indexed columns only; phones and e-mails are normalised first."""
        term = search_term.strip()
        if not term:
            return queryset, False
        values = {term}
        match = Q(user_id=term)
        try:
            phone = normalize_phone(term)
            values.add(phone)
            match |= Q(phone=phone)
        except ValueError:
            pass
        if "@" in term:
            try:
                email = normalize_email(term)
                values.add(email)
                match |= Q(email=email)
            except ValueError:
                pass
        if not request.user.has_perm("profiles.lookup_profile"):
            # Phones, e-mails and identities find a person: the lookup permission's business.
            return queryset.filter(user_id=term), False
        match |= Q(id__in=Identity.objects.filter(value__in=values).values("profile_id"))
        found = queryset.filter(match)
        services.record_profile_access(
            staff=request.user, query=f"profiles list: {term}", profiles=list(found.values_list("id", "user_id")[:100])
        )
        return found, False

    def change_view(self, request, object_id, form_url="", extra_context=None):
        profile = None
        if request.method == "GET" and str(object_id).isdigit():
            profile = Profile.objects.filter(pk=object_id).values_list("id", "user_id").first()
        if profile is not None:
            services.record_profile_access(staff=request.user, query=f"profile page: {profile[1]}", profiles=[profile])
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self):
        return [
            path("lookup/", self.admin_site.admin_view(self.lookup_view), name="profiles_profile_lookup"),
            *super().get_urls(),
        ]

    def lookup_view(self, request):
        """The customer-service page: one box, the caller's 360 view, every search recorded."""
        if not request.user.has_perm("profiles.lookup_profile"):
            raise PermissionDenied
        query = request.GET.get("q")
        results, error = [], ""
        if query is not None:
            try:
                outcome = services.lookup_profiles(staff=request.user, query=query, channel=LookupChannel.ADMIN)
                results = [
                    _lookup_card(p, selectors.lookup_view(p, may_see_personal_data=outcome.may_see_personal_data))
                    for p in outcome.profiles
                ]
            except ValidationError as exc:
                error = " ".join(exc.messages)
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Customer-service lookup"),
            "opts": self.model._meta,
            "query": query or "",
            "error": error,
            "searched": query is not None and not error,
            "results": results,
        }
        return TemplateResponse(request, "admin/profiles/lookup.html", context)

    def _tag_name(self, request) -> str | None:
        name = request.POST.get("tag_name", "").strip()
        if not name:
            self.message_user(request, gettext("Enter the tag's name in the Tag box first."), level=messages.ERROR)
            return None
        return name

    def has_tag_permission(self, request) -> bool:
        return request.user.has_perms(["profiles.add_profiletag", "profiles.delete_profiletag"])

    @admin.action(description=_("Add the tag to the selected profiles"), permissions=["tag"])
    def add_tag(self, request, queryset):
        if not (name := self._tag_name(request)):
            return
        ids = list(queryset.filter(merged_into__isnull=True).values_list("id", flat=True))
        gained = services.tag_profiles(tag_name=name, profile_ids=ids, source=TagSource.MANUAL, actor=request.user)
        self.message_user(request, gettext("%(n)s profiles gained '%(tag)s'.") % {"n": gained, "tag": name})

    @admin.action(description=_("Remove the tag from the selected profiles"), permissions=["tag"])
    def remove_tag(self, request, queryset):
        if not (name := self._tag_name(request)):
            return
        ids = list(queryset.values_list("id", flat=True))
        lost = services.untag_profiles(tag_name=name, profile_ids=ids, actor=request.user)
        self.message_user(request, gettext("%(n)s profiles lost '%(tag)s'.") % {"n": lost, "tag": name})


@admin.register(Identity)
class IdentityAdmin(admin.ModelAdmin):
    list_display = ["kind", "shown_value", "profile", "created_at"]
    list_filter = ["kind"]
    search_fields = ["=value"]
    raw_id_fields = ["profile"]
    list_select_related = ["profile"]
    show_full_result_count = False

    def get_queryset(self, request):
        return _for_viewer(super().get_queryset(request), request)

    @admin.display(description=_("value"))
    def shown_value(self, obj: Identity) -> str:
        return _shown_identity(obj)

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        if not request.user.has_perm("profiles.lookup_profile"):
            return queryset.none(), False  # an identity value finds a person: the lookup's business
        found, duplicates = super().get_search_results(request, queryset, term)
        services.record_profile_access(
            staff=request.user,
            query=f"identities list: {term}",
            profiles=list(found.values_list("profile_id", "profile__user_id").distinct()[:100]),
        )
        return found, duplicates

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ProfileMerge)
class ProfileMergeAdmin(ReadOnlyAdmin):
    list_display = ["merged_user_id", "into", "reason", "at"]
    search_fields = ["=merged_user_id", "=into__user_id"]
    date_hierarchy = "at"
    raw_id_fields = ["into", "merged"]


# --- tags -----------------------------------------------------------------------------------


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ["name", "category", "source", "rule", "members", "computed_at"]
    list_filter = ["source", "category"]
    search_fields = ["name", "category"]
    readonly_fields = ["rule", "created_at", "computed_at"]
    change_form_template = "admin/profiles/tag/change_form.html"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("rule").annotate(member_count=Count("profile_tags"))

    @admin.display(description=_("members"), ordering="member_count")
    def members(self, obj: Tag) -> int:
        return obj.member_count

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = extra_context or {}
        tag = self.get_object(request, object_id)
        if tag is not None:
            history = selectors.tag_member_history(tag, days=90)
            recent = TagChange.objects.filter(tag=tag).select_related("profile").order_by("-at")[:20]
            extra_context.update(
                member_history={"labels": [d.isoformat() for d, _n in history], "counts": [n for _d, n in history]},
                recent_changes=recent,
                changes_url=reverse("admin:profiles_tagchange_changelist") + f"?tag__id__exact={tag.id}",
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        services.save_tag(tag=obj, changed=form.changed_data, actor=request.user)

    def delete_model(self, request, obj):
        services.delete_tag(tag=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for tag in queryset:
                services.delete_tag(tag=tag, actor=request.user)


class TagRuleForm(forms.ModelForm):
    class Meta:
        model = TagRule
        fields = [
            "name",
            "kind",
            "is_active",
            "description",
            "tag_category",
            "tag_name",
            "conditions",
            "event_name",
            "category_property",
            "window_days",
            "min_count",
            "p_value_threshold",
            "tag_prefix",
        ]
        widgets = {"conditions": forms.Textarea(attrs={"rows": 8, "cols": 90, "style": "font-family: monospace"})}
        help_texts = {
            # The admin shows help texts as HTML.
            "conditions": _(
                "A JSON list; every condition must hold. Traits: "
                '<code>{"trait": "city", "op": "in", "value": ["Shanghai"]}</code> '
                "(ops eq, ne, in, gte, lte, contains, is_set; custom traits too). Events: "
                '<code>{"event": "order_paid", "within_days": 30, "op": "gte", "count": 3}</code>.'
            )
        }


@admin.register(TagRule)
class TagRuleAdmin(admin.ModelAdmin):
    form = TagRuleForm
    list_display = [
        "name",
        "kind",
        "is_active",
        "tag_name",
        "event_name",
        "last_run_at",
        "last_run_members",
        "last_run_seconds",
        "last_status",
        "reason",
    ]
    list_filter = ["kind", "is_active", "last_status"]
    search_fields = ["name", "tag_name", "event_name"]
    readonly_fields = [
        "last_status",
        "last_run_at",
        "last_run_members",
        "last_run_seconds",
        "last_error",
        "created_at",
    ]
    actions = ["recompute_now", "retry"]
    fieldsets = [
        (None, {"fields": ["name", "kind", "is_active", "description", "tag_category"]}),
        (_("Rule tag"), {"fields": ["tag_name", "conditions"]}),
        (
            _("Preference tag"),
            {
                "fields": [
                    "event_name",
                    "category_property",
                    "window_days",
                    "min_count",
                    "p_value_threshold",
                    "tag_prefix",
                ]
            },
        ),
        (_("Last run"), {"fields": readonly_fields}),
    ]

    @admin.display(description=_("reason"))
    def reason(self, obj: TagRule) -> str:
        return (obj.last_error[:120] + "…") if len(obj.last_error) > 120 else (obj.last_error or "-")

    @admin.action(description=_("Retry the selected failed rules"), permissions=["change"])
    def retry(self, request, queryset):
        failed = list(queryset.filter(last_status="failed"))
        for rule in failed:
            services.retry_tag_rule(rule_id=rule.pk, actor=request.user)
        self.message_user(request, gettext("Queued %(n)s failed rule(s) again.") % {"n": len(failed)})
        if skipped := len(queryset) - len(failed):
            self.message_user(
                request, gettext("%(n)s not failed: left alone.") % {"n": skipped}, level=messages.WARNING
            )

    def save_model(self, request, obj, form, change):
        services.save_tag_rule(rule=obj, changed=form.changed_data, actor=request.user)

    def delete_model(self, request, obj):
        services.delete_tag_rule(rule=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for rule in queryset:
                services.delete_tag_rule(rule=rule, actor=request.user)

    @admin.action(description=_("Recompute the selected rules now"), permissions=["change"])
    def recompute_now(self, request, queryset):
        ids = services.request_tag_rule_recompute(
            rule_ids=list(queryset.values_list("id", flat=True)), actor=request.user
        )
        self.message_user(
            request, gettext("Queued %(n)s rule(s); refresh in a moment to see the result.") % {"n": len(ids)}
        )


class ProfileTagResource(resources.ModelResource):
    """CSV rows `user_id,tag,category,score,source`; imported rows take the `import` source."""

    user_id = fields.Field(
        attribute="profile", column_name="user_id", widget=widgets.ForeignKeyWidget(Profile, field="user_id")
    )
    tag = fields.Field(attribute="tag", column_name="tag", widget=widgets.ForeignKeyWidget(Tag, field="name"))
    category = fields.Field(attribute="tag__category", column_name="category", readonly=True)

    class Meta:
        model = ProfileTag
        fields = ("user_id", "tag", "category", "score", "source", "computed_at")
        export_order = fields
        import_id_fields = ("user_id", "tag")
        skip_unchanged = True

    def before_import_row(self, row, **kwargs):
        # Tags named in a file are created on the fly; user ids must exist (an unknown one is a
        # row error the preview shows, not a new person).
        name = (row.get("tag") or "").strip()
        if name:
            Tag.objects.get_or_create(
                name=name, defaults={"category": row.get("category") or "", "source": TagSource.IMPORT}
            )
        if row.get("user_id"):
            profile = selectors.profile_for_user_id(str(row["user_id"]).strip())
            if profile is not None:
                row["user_id"] = profile.user_id

    def before_save_instance(self, instance, row, **kwargs):
        instance.source = TagSource.IMPORT
        instance._created = instance.pk is None

    def after_save_instance(self, instance, row, **kwargs):
        if not kwargs.get("dry_run"):
            services.record_imported_tag(profile_tag=instance, created=getattr(instance, "_created", False))


@admin.register(ProfileTag)
class ProfileTagAdmin(ImportExportModelAdmin):
    resource_classes = [ProfileTagResource]
    list_display = ["profile", "tag", "score", "source", "computed_at"]
    list_filter = ["source", "tag__category", "tag"]
    search_fields = ["=profile__user_id", "=tag__name"]
    raw_id_fields = ["profile"]
    list_select_related = ["profile", "tag"]
    show_full_result_count = False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # members change through actions and rules, which keep the history

    def has_import_permission(self, request) -> bool:
        return request.user.has_perm("profiles.add_profiletag")

    def has_export_permission(self, request) -> bool:
        return request.user.has_perm("profiles.view_profiletag")

    def has_add_permission(self, request) -> bool:
        return False

    def delete_queryset(self, request, queryset):
        by_tag: dict[str, list[int]] = {}
        for tag_name, profile_id in queryset.values_list("tag__name", "profile_id"):
            by_tag.setdefault(tag_name, []).append(profile_id)
        with transaction.atomic():
            for tag_name, ids in by_tag.items():
                services.untag_profiles(tag_name=tag_name, profile_ids=ids, actor=request.user)

    def delete_model(self, request, obj):
        self.delete_queryset(request, ProfileTag.objects.filter(pk=obj.pk))

    def after_import(self, dataset, result, **kwargs):
        pass

    def process_result(self, result, request):
        if not result.has_errors() and not result.has_validation_errors():
            services.record_tags_imported(
                new=result.totals.get("new", 0), updated=result.totals.get("update", 0), actor=request.user
            )
        return super().process_result(result, request)


@admin.register(TagChange)
class TagChangeAdmin(ReadOnlyAdmin):
    list_display = ["at", "tag", "action", "profile", "source"]
    list_filter = ["action", "source", "tag"]
    search_fields = ["=profile__user_id", "=tag__name"]
    date_hierarchy = "at"
    list_select_related = ["tag", "profile"]
    show_full_result_count = False


@admin.register(LookupRecord)
class LookupRecordAdmin(ReadOnlyAdmin):
    """Who looked up whom: visible to superusers only, and nobody may change or delete it."""

    list_display = ["at", "staff_username", "query", "channel", "user_ids", "saw_personal_data", "refused"]
    list_filter = ["channel", "saw_personal_data"]
    search_fields = ["=staff_username", "=query"]
    date_hierarchy = "at"

    def has_module_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_superuser


@admin.register(SegmentRejection)
class SegmentRejectionAdmin(ReadOnlyAdmin):
    """Messages of the Segment tracking API that were refused, the last ones of each key: the
    libraries ignore the replies, so this is where an integrator's mistakes show."""

    list_display = ["at", "api_key", "message_type", "message_id", "index", "reasons"]
    list_filter = ["api_key", "message_type"]
    search_fields = ["message_id"]
    date_hierarchy = "at"
    list_select_related = ["api_key"]

    @admin.display(description=_("Reasons"))
    def reasons(self, obj: SegmentRejection) -> str:
        return "; ".join(f"{name}: {' '.join(why)}" for name, why in obj.errors.items())
