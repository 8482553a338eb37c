"""Scope checks for API views: a key needs the scope, a staff session the matching permission."""

from __future__ import annotations

from rest_framework.permissions import BasePermission

from access.models import SCOPE_PERMISSIONS, ApiKey, Scope


def has_scope(request, scope: str, *, staff_perms: tuple[str, ...] = ()) -> bool:
    if isinstance(request.auth, ApiKey):
        return scope in request.auth.scopes
    user = request.user
    if not (user and user.is_authenticated and user.is_active and user.is_staff):
        return False
    return user.has_perms((SCOPE_PERMISSIONS[Scope(scope)], *staff_perms))


def HasScope(scope: str, *staff_perms: str) -> type[BasePermission]:
    """Permission class for one scope; extra Django permissions may be asked of staff sessions."""
    Scope(scope)  # fail at import time on a misspelt scope

    class _HasScope(BasePermission):
        message = f"This endpoint needs the '{scope}' scope."
        required_scope = scope
        # What a staff session needs instead (the security matrix grants exactly these).
        required_perms = (SCOPE_PERMISSIONS[Scope(scope)], *staff_perms)

        def has_permission(self, request, view) -> bool:
            return has_scope(request, scope, staff_perms=staff_perms)

    _HasScope.__name__ = f"HasScope[{scope}]"
    return _HasScope


class StaffPermission(BasePermission):
    """Staff sessions only (API keys refused) with the given Django permissions."""

    perms: tuple[str, ...] = ()

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, ApiKey):
            return False
        user = request.user
        return bool(user and user.is_authenticated and user.is_staff and user.has_perms(self.perms))


def StaffWith(*perms: str) -> type[BasePermission]:
    return type(f"StaffWith[{','.join(perms)}]", (StaffPermission,), {"perms": perms})
