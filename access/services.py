"""Writes of the access layer: issuing and revoking API keys, recording audit entries."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from access import keycache
from access.errors import ApiKeyNameTaken
from access.models import ApiKey, AuditEntry, Scope, StaffLanguage

KEY_PREFIX = "olk"


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    plaintext: str  # shown once, never stored


def parse_scopes(raw: str | list[str]) -> list[str]:
    items = raw.split(",") if isinstance(raw, str) else raw
    scopes = [item.strip() for item in items if item.strip()]
    unknown = sorted(set(scopes) - set(Scope.values))
    if unknown:
        raise ValueError(f"unknown scopes {unknown}; known: {', '.join(Scope.values)}")
    if not scopes:
        raise ValueError("at least one scope is required")
    return sorted(set(scopes))


@transaction.atomic
def create_api_key(*, name: str, scopes: list[str], created_by: AbstractBaseUser | None = None) -> IssuedKey:
    """Create a key and return it with its plaintext, which is not kept anywhere."""
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    plaintext = f"{KEY_PREFIX}_{prefix}_{secret}"
    try:
        with transaction.atomic():
            api_key = ApiKey.objects.create(
                name=name,
                prefix=prefix,
                digest=digest_of(plaintext),
                scopes=parse_scopes(scopes),
                created_by=created_by,
            )
    except IntegrityError as exc:
        raise ApiKeyNameTaken(f"an API key named {name!r} already exists") from exc
    record_audit(actor=created_by, action="access.api_key_created", obj=api_key, details={"scopes": api_key.scopes})
    return IssuedKey(api_key=api_key, plaintext=plaintext)


@transaction.atomic
def revoke_api_key(*, api_key: ApiKey, revoked_by: AbstractBaseUser | None = None) -> ApiKey:
    updated = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db()
    # This process stops accepting it now; the others within the cache's TTL (`access.keycache`).
    keycache.forget(api_key.digest)
    if updated:
        record_audit(actor=revoked_by, action="access.api_key_revoked", obj=api_key)
    return api_key


def touch_api_key(*, api_key: ApiKey, min_interval_seconds: int = 60) -> None:
    """Record the key's use; at most once a minute, so hot keys do not write on every request."""
    now = timezone.now()
    threshold = now - timezone.timedelta(seconds=min_interval_seconds)
    if api_key.last_used_at is not None and api_key.last_used_at >= threshold:
        return  # the row just read says it is fresh: no round trip on the hot path
    ApiKey.objects.filter(pk=api_key.pk).filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=threshold)).update(
        last_used_at=now
    )
    # The instance may be the cached one that later requests check: it is fresh now.
    api_key.last_used_at = now


def record_audit(
    *,
    action: str,
    obj: Any = None,
    actor: AbstractBaseUser | None = None,
    api_key: ApiKey | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append an audit row. Call it inside the service's transaction so it commits with the change."""
    if actor is not None and not getattr(actor, "is_authenticated", False):
        actor = None
    return AuditEntry.objects.create(
        actor=actor,
        api_key=api_key,
        action=action,
        object_type=obj._meta.label_lower if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        details=details or {},
    )


@transaction.atomic
def set_staff_language(*, user: AbstractBaseUser, language: str) -> StaffLanguage:
    """Keep a staff member's chosen admin language (one of settings.LANGUAGES) for their next logins."""
    if language not in dict(settings.LANGUAGES):
        raise ValueError(f"unknown language {language!r}")
    chosen, _created = StaffLanguage.objects.update_or_create(user=user, defaults={"language": language})
    return chosen
