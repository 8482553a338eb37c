"""Writes of the material library: one function per action, audited in its transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.translation import gettext

from access.services import record_audit
from materials import errors
from materials.models import CHANNEL_FIELDS, Material, MaterialChannel, MaterialVersion, VersionStatus
from materials.rendering import template_problems

APPROVE_PERMISSION = "materials.approve_material"
# A test send reaches a real device or address: only those who may send campaigns do it.
TEST_SEND_PERMISSION = "campaigns.send_campaign"


def _check(channel: str, *, fields: dict[str, str], defaults: dict[str, Any], url: str) -> None:
    problems = template_problems(channel=channel, fields=fields, defaults=defaults, url=url)
    if problems:
        raise errors.InvalidTemplate("; ".join(str(p) for p in problems), problems=[p.as_dict() for p in problems])


def _fields(channel: str, values: dict[str, Any]) -> dict[str, str]:
    return {name: values.get(name) or "" for name in CHANNEL_FIELDS[channel]}


@transaction.atomic
def create_material(
    *,
    name: str,
    channel: str,
    tags: list[str] | None = None,
    owner: Any = None,
    description: str = "",
    actor: Any = None,
    api_key: Any = None,
) -> Material:
    if channel not in MaterialChannel.values:
        raise errors.InvalidTemplate(f"Unknown channel {channel!r}.", problems=[{"field": "channel", "line": None}])
    material = Material.objects.create(
        name=name, channel=channel, tags=sorted(set(tags or [])), owner=owner, description=description
    )
    record_audit(
        action="materials.material_created", obj=material, actor=actor, api_key=api_key, details={"name": name}
    )
    return material


@transaction.atomic
def update_material(*, material: Material, actor: Any = None, api_key: Any = None, **changes: Any) -> Material:
    """Name, tags, owner, description and archived may change; the channel may not (its
    versions are written for it)."""
    allowed = {"name", "tags", "owner", "description", "archived"}
    for key, value in changes.items():
        if key not in allowed:
            raise TypeError(f"update_material() got an unexpected field {key!r}")
        setattr(material, key, sorted(set(value)) if key == "tags" else value)
    material.save()
    details = {k: (v.pk if hasattr(v, "pk") else v) for k, v in changes.items()}
    record_audit(action="materials.material_changed", obj=material, actor=actor, api_key=api_key, details=details)
    return material


@transaction.atomic
def add_version(
    *,
    material: Material,
    title: str = "",
    body: str = "",
    html: str = "",
    url: str = "",
    defaults: dict[str, Any] | None = None,
    actor: Any = None,
    api_key: Any = None,
) -> MaterialVersion:
    """A new draft, numbered after the last; refused with each template problem and its line."""
    defaults = defaults or {}
    fields = _fields(material.channel, {"title": title, "body": body, "html": html})
    _check(material.channel, fields=fields, defaults=defaults, url=url)
    # The material's row lock numbers concurrent drafts one after the other.
    Material.objects.select_for_update().filter(pk=material.pk).first()
    number = (material.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = MaterialVersion.objects.create(
        material=material,
        number=number,
        url=url,
        defaults=defaults,
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
        **{"title": "", "body": "", "html": "", **fields},
    )
    record_audit(
        action="materials.version_added", obj=version, actor=actor, api_key=api_key, details={"number": number}
    )
    return version


@transaction.atomic
def update_draft(
    *, version: MaterialVersion, actor: Any = None, api_key: Any = None, **changes: Any
) -> MaterialVersion:
    """Edit a draft; an approved version is frozen (409): write a new version instead."""
    version = MaterialVersion.objects.select_for_update().select_related("material").get(pk=version.pk)
    if version.status != VersionStatus.DRAFT:
        raise errors.VersionFrozen(
            gettext("Version %(number)s is approved; add a new version to change it.") % {"number": version.number}
        )
    for key, value in changes.items():
        if key not in {"title", "body", "html", "url", "defaults"}:
            raise TypeError(f"update_draft() got an unexpected field {key!r}")
        setattr(version, key, value if key == "defaults" else (value or ""))
    _check(version.material.channel, fields=version.templates(), defaults=version.defaults or {}, url=version.url)
    version.save()
    record_audit(action="materials.version_changed", obj=version, actor=actor, api_key=api_key, details=sorted(changes))
    return version


@transaction.atomic
def approve_version(*, version: MaterialVersion, actor: Any) -> MaterialVersion:
    """An Operations lead approves a draft for sending, after the same checks as at save (the
    limits may have changed since). Approving an approved version returns it unchanged."""
    if actor is None or not getattr(actor, "is_authenticated", False) or not actor.has_perm(APPROVE_PERMISSION):
        raise errors.NotAllowed(
            gettext("Only a member of Operations lead (materials.approve_material) approves versions.")
        )
    version = MaterialVersion.objects.select_for_update().select_related("material").get(pk=version.pk)
    if version.status == VersionStatus.APPROVED:
        return version
    _check(version.material.channel, fields=version.templates(), defaults=version.defaults or {}, url=version.url)
    version.status = VersionStatus.APPROVED
    version.approved_by = actor
    version.approved_at = timezone.now()
    version.save(update_fields=["status", "approved_by", "approved_at"])
    record_audit(action="materials.version_approved", obj=version, actor=actor, details={"number": version.number})
    return version


# --- a test message ----------------------------------------------------------------------------

# The campaigns layer above owns the channels; it registers how to send one message now.
_test_sender: Callable[..., Any] | None = None


def register_test_sender(sender: Callable[..., Any]) -> None:
    global _test_sender
    _test_sender = sender


def send_test(*, version: MaterialVersion, user_id: str, actor: Any = None) -> tuple[bool, str]:
    """Render `version` for the staff member's own profile (`user_id`: their device, address or
    phone) and send it now through the real channel, marked as a test. (sent?, reason)."""
    if _test_sender is None:
        return False, "No channel is installed to send with."
    return _test_sender(version=version, user_id=user_id, actor=actor)
