"""`Authorization: Api-Key <key>` authentication for product servers and automation."""

from __future__ import annotations

import hmac

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication, exceptions

from access import keycache
from access.models import ApiKey
from access.services import digest_of, touch_api_key


def api_key_for(key: str) -> ApiKey:
    """The active key whose plaintext is `key`, found by its digest as every entry point finds it
    (`Api-Key` header, the Segment write key); AuthenticationFailed with the reason otherwise.
    The reasons never echo the key."""
    parts = key.split("_", 2)
    if len(parts) != 3 or not key:
        raise exceptions.AuthenticationFailed("Malformed API key.")
    digest = digest_of(key)
    # A hot key is answered from this process's short-lived cache (see `access.keycache`).
    api_key = keycache.cached(digest)
    if api_key is None:
        api_key = ApiKey.objects.filter(prefix=parts[1]).first()
        if api_key is None or not hmac.compare_digest(api_key.digest, digest):
            raise exceptions.AuthenticationFailed("Invalid API key.")
        keycache.remember(digest, api_key)
    if not api_key.is_active:
        raise exceptions.AuthenticationFailed("API key revoked.")
    return api_key


class ApiKeyUser(AnonymousUser):
    """The request's user when a key authenticated it: authenticated, but no staff member, so
    session-only permissions never apply to it."""

    def __init__(self, api_key: ApiKey) -> None:
        self.api_key = api_key

    @property
    def is_authenticated(self) -> bool:  # type: ignore[override]
        return True

    def __str__(self) -> str:
        return f"api-key:{self.api_key.name}"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Api-Key"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        keyword, _, key = header.partition(" ")
        if keyword != self.keyword:
            return None
        api_key = api_key_for(key.strip())
        touch_api_key(api_key=api_key)
        return ApiKeyUser(api_key), api_key

    def authenticate_header(self, request) -> str:
        # Makes DRF answer 401 (not 403) to a request without credentials.
        return self.keyword
