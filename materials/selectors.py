"""Reads of the material library: the values templates see, previews, lists."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from django.db.models import Max, QuerySet

from coupons.models import Coupon, RuleKind
from crm.models import CustomerValue
from materials.models import Material, MaterialVersion
from materials.rendering import (
    VARIABLES,
    RenderError,
    compile_templates,
    limit_problems,
    render_in_child,
    sms_size,
)
from predictions.models import Prediction
from profiles.models import Profile, ProfileTag


def materials(*, channel: str = "", tag: str = "", search: str = "", include_archived: bool = False) -> QuerySet:
    qs = Material.objects.select_related("owner").annotate(latest_version=Max("versions__number"))
    if not include_archived:
        qs = qs.filter(archived=False)
    if channel:
        qs = qs.filter(channel=channel)
    if tag:
        qs = qs.filter(tags__contains=[tag])
    if search:
        qs = qs.filter(name__icontains=search)
    return qs.order_by("name", "id")


def person_contexts(profile_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The profile variables of many people in five queries, whatever their number."""
    ids = list(set(profile_ids))
    contexts: dict[int, dict[str, Any]] = {}
    for row in Profile.objects.filter(pk__in=ids).values("id", "user_id", "name", "city", "traits"):
        contexts[row["id"]] = {
            "user_id": row["user_id"],
            "name": row["name"],
            "city": row["city"],
            "traits": row["traits"] or {},
            "tags": [],
            "tier": None,
            "predicted_value": None,
        }
    for pid, tier in CustomerValue.objects.filter(profile_id__in=ids, tier__isnull=False).values_list(
        "profile_id", "tier__name"
    ):
        if pid in contexts:
            contexts[pid]["tier"] = tier
    for pid, value in Prediction.objects.filter(profile_id__in=ids, value_365d__isnull=False).values_list(
        "profile_id", "value_365d"
    ):
        if pid in contexts:
            contexts[pid]["predicted_value"] = value
    tags: dict[int, list[str]] = defaultdict(list)
    for pid, name in ProfileTag.objects.filter(profile_id__in=ids).values_list("profile_id", "tag__name"):
        tags[pid].append(name)
    for pid, names in tags.items():
        if pid in contexts:
            contexts[pid]["tags"] = sorted(names)
    return contexts


def coupon_contexts(codes: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The coupon variables of issued codes: the code, what it takes off, when it expires."""
    out: dict[str, dict[str, Any]] = {}
    for code, kind, value, expires_at in Coupon.objects.filter(code__in=[c for c in codes if c]).values_list(
        "code", "rule__kind", "rule__value", "expires_at"
    ):
        out[code] = {
            "coupon_code": code,
            "coupon_amount": f"{value:.0f}%" if kind == RuleKind.PERCENT else f"{value:.2f}",
            "coupon_expiry": expires_at.date().isoformat() if expires_at else None,
        }
    return out


def compiled(version: MaterialVersion) -> Any:
    return compile_templates(
        channel=version.material.channel, fields=version.templates(), defaults=version.defaults, url=version.url
    )


def preview(*, version: MaterialVersion, profile: Profile | None = None) -> dict[str, Any]:
    """The version as `profile` would read it (sample values where the person is not given; a
    sample coupon and link, since none is issued for a preview), or the reason it fails for them."""
    context = {name: sample for name, (_d, sample) in VARIABLES.items()}
    if profile is not None:
        person = person_contexts([profile.pk]).get(profile.pk, {})
        context.update(person)
    result: dict[str, Any] = {"rendered": {}, "error": "", "problems": [], "sms": None}
    try:
        fields = render_in_child(compiled(version), context, check_limits=False)
    except RenderError as exc:
        result["error"] = str(exc)
        return result
    result["rendered"] = fields
    result["problems"] = [{"field": f, "reason": r} for f, r in limit_problems(version.material.channel, fields)]
    if version.material.channel == "sms":
        size = sms_size(fields.get("body", ""))
        result["sms"] = {"encoding": size.encoding, "characters": size.units, "segments": size.segments}
    return result


# --- history across campaigns ------------------------------------------------------------------

# The campaigns layer above registers how to count a material's sends (it owns deliveries).
_history_provider: Callable[[Material], list[dict[str, Any]]] | None = None


def register_history_provider(provider: Callable[[Material], list[dict[str, Any]]]) -> None:
    global _history_provider
    _history_provider = provider


def material_history(material: Material) -> list[dict[str, Any]]:
    """Per campaign variant that sent one of its versions: sends, opens, clicks, conversions and
    the effect over the holdout where the campaign had one."""
    return _history_provider(material) if _history_provider is not None else []
