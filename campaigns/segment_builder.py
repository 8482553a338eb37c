"""Reads behind the admin's segment builder: the condition kinds and their choices (drawn from
`campaigns.segments`, so a condition added there is offered here), warnings for conditions that
name what nobody has (a misspelled tag would otherwise save as a segment of 0 people), and the live
size and sample of a definition not saved yet."""

from __future__ import annotations

from typing import Any

from django.db.models import Count
from django.utils.translation import gettext_lazy as _

from campaigns import segments
from campaigns.models import Segment
from campaigns.segments import DefinitionError, compile_definition

# How the builder draws each leaf kind of `segments.CONDITION_KEYS`: "names" picks one or more
# names (from `choices` where the values are fixed), "trait" a trait, operator and value, "event"
# an event name with at least / at most / exactly N times in the last D days, "uplift" a coupon
# rule whose uplift model has scored people and the top N % of them. A kind not listed
# here (added to segments.py later) is offered as JSON only; groups (three levels deep) and `not`
# of a condition or a group are drawn as rows.
LEAF_SHAPES = {
    "tag": "names",
    "tier": "names",
    "predicted_tier": "names",
    "lifecycle": "names",
    "rfm_segment": "names",
    "trait": "trait",
    "event": "event",
    "uplift": "uplift",
}
LEAF_LABELS = {
    "tag": _("has tag"),
    "tier": _("value tier is"),
    "predicted_tier": _("predicted value tier is"),
    "lifecycle": _("lifecycle stage is"),
    "rfm_segment": _("customer type (RFM) is"),
    "trait": _("trait"),
    "event": _("did event"),
    "uplift": _("top % by predicted uplift for coupon rule"),
}
TRAIT_OP_LABELS = {
    "eq": _("is"),
    "ne": _("is not"),
    "in": _("is one of (comma-separated)"),
    "gte": _("is at least"),
    "lte": _("is at most"),
    "contains": _("contains"),
}
EVENT_OP_LABELS = {"gte": _("at least"), "lte": _("at most"), "eq": _("exactly")}
# Suggestions offered in the builder's boxes (the most used first); any other name may be typed.
SUGGESTIONS = 300


def builder_options() -> dict[str, Any]:
    """What the builder offers: every leaf kind of segments.py it can draw (predicted tiers only
    once a prediction run has placed people in them, uplift only for rules whose uplift model has
    scored people), each with its choices or suggestions."""
    from coupons.models import UpliftScore
    from crm.models import LifecycleStage, RfmSegment, ValueTier
    from predictions.models import PredictedTier, Prediction
    from profiles.models import Tag
    from tracking.selectors import event_names

    # Predicted tiers are offered once a prediction run has placed somebody in one.
    scored = Prediction.objects.filter(tier__isnull=False).exists()
    predicted = list(PredictedTier.objects.order_by("slug").values_list("slug", "name")) if scored else []
    scored_rules = UpliftScore.objects.values_list("rule_id", "rule__name").distinct().order_by("rule__name", "rule_id")
    uplift = [(str(rule_id), f"{name} (#{rule_id})") for rule_id, name in scored_rules]
    choices = {
        "uplift": uplift,
        "tier": list(ValueTier.objects.order_by("slug").values_list("slug", "name")),
        "predicted_tier": predicted,
        "lifecycle": [(c.value, str(c.label)) for c in LifecycleStage],
        "rfm_segment": [(c.value, str(c.label)) for c in RfmSegment],
    }
    kinds = [
        {"key": key, "label": str(LEAF_LABELS[key]), "shape": LEAF_SHAPES[key], "choices": choices.get(key)}
        for key in segments.CONDITION_KEYS
        if key in LEAF_SHAPES and (key != "predicted_tier" or predicted) and (key != "uplift" or uplift)
    ]
    tags = Tag.objects.annotate(n=Count("profile_tags")).filter(n__gt=0).order_by("-n", "name").values_list("name", "n")
    return {
        "kinds": kinds,
        "trait_ops": [(op, str(TRAIT_OP_LABELS[op])) for op in segments.TRAIT_OPS],
        "event_ops": [(op, str(EVENT_OP_LABELS[op])) for op in segments.EVENT_OPS],
        "traits": sorted(segments.TRAIT_COLUMNS),
        "tags": [name for name, _n in tags[:SUGGESTIONS]],
        "events": event_names(limit=SUGGESTIONS),
    }


def _leaves(node: Any) -> list[dict[str, Any]]:
    """Every leaf condition of a (valid) definition tree."""
    found, stack = [], [node]
    while stack:
        item = stack.pop()
        if not isinstance(item, dict):
            continue
        if "all" in item or "any" in item:
            stack.extend(reversed(item.get("all") or item.get("any") or []))  # in the order written
        elif "not" in item:
            stack.append(item["not"])
        else:
            found.append(item)
    return found


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def definition_warnings(definition: Any) -> list[str]:
    """Conditions that are valid but match nobody because they name a tag, tier, trait value or
    event no profile has: most often a typo, said before the segment is saved."""
    from crm.models import ValueTier
    from predictions.models import PredictedTier
    from profiles.models import Profile, Tag
    from tracking.selectors import event_name_seen

    warnings: list[str] = []
    for leaf in _leaves(definition):
        if "tag" in leaf:
            for name in _as_list(leaf["tag"]):
                if not Tag.objects.filter(name=name, profile_tags__isnull=False).exists():
                    warnings.append(_("Nobody has the tag %(name)r (check the spelling).") % {"name": name})
        elif "tier" in leaf:
            known = set(ValueTier.objects.values_list("slug", flat=True))
            for slug in _as_list(leaf["tier"]):
                if slug not in known:
                    warnings.append(
                        _("There is no value tier %(slug)r; the tiers are %(known)s.")
                        % {"slug": slug, "known": ", ".join(sorted(known)) or "none"}
                    )
        elif "predicted_tier" in leaf:
            known = set(PredictedTier.objects.values_list("slug", flat=True))
            for slug in _as_list(leaf["predicted_tier"]):
                if slug not in known:
                    warnings.append(_("There is no predicted tier %(slug)r.") % {"slug": slug})
        elif "event" in leaf:
            if not event_name_seen(leaf["event"]):
                warnings.append(
                    _("No event named %(name)r has been recorded (check the spelling).") % {"name": leaf["event"]}
                )
        elif "trait" in leaf and leaf.get("op", "eq") in ("eq", "in"):
            name = leaf["trait"]
            for value in _as_list(leaf.get("value")):
                if name in segments.TRAIT_COLUMNS:
                    if segments.TRAIT_COLUMNS[name] != "text":
                        continue
                    seen = Profile.objects.filter(**{name: value}).exists()
                else:
                    seen = Profile.objects.filter(traits__contains={name: value}).exists()
                if not seen:
                    warnings.append(
                        _("No profile has %(trait)s = %(value)r (check the spelling).")
                        % {"trait": name, "value": value}
                    )
    return warnings


def check_definition(definition: Any) -> dict[str, Any]:
    """The builder's live answer for a definition being edited: its errors (each with the fields
    that are allowed), else its size, a sample and its warnings."""
    from campaigns.selectors import segment_preview

    try:
        compile_definition(definition)
    except DefinitionError as exc:
        return {"errors": exc.errors, "warnings": [], "size": None, "sample": []}
    preview = segment_preview(Segment(definition=definition))
    return {"errors": [], "warnings": definition_warnings(definition), **preview}
