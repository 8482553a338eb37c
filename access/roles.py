"""Staff roles as auth groups.

The groups themselves are created by a migration (`0002_roles`). Their permissions are declared
by each app next to its models, as `role_permissions` on its AppConfig, and granted after every
`migrate`, so an app added later brings its own grants without `access` knowing about it.
Grants are only ever added: permissions an administrator gave a group by hand are left alone.

A declared permission is `app_label.codename`; `app_label.*` means every permission of that app
and `app_label.view_*` every view permission of it.
"""

from __future__ import annotations

import fnmatch

from django.apps import apps as global_apps

OPERATIONS = "Operations"
CUSTOMER_SERVICE = "Customer service"
CUSTOMER_SERVICE_LEAD = "Customer service lead"
ANALYST = "Analyst"
# Approves what goes out (material versions); created by `sync_roles` like the others' grants.
OPERATIONS_LEAD = "Operations lead"
ROLES = (OPERATIONS, CUSTOMER_SERVICE, CUSTOMER_SERVICE_LEAD, ANALYST, OPERATIONS_LEAD)


def declared_grants() -> dict[str, set[str]]:
    grants: dict[str, set[str]] = {role: set() for role in ROLES}
    for config in global_apps.get_app_configs():
        for role, perms in getattr(config, "role_permissions", {}).items():
            grants.setdefault(role, set()).update(perms)
    return grants


def sync_roles(sender=None, using: str = "default", apps=global_apps, **kwargs) -> None:
    """post_migrate receiver: grant every role the permissions its apps declare."""
    from django.contrib.auth.management import create_permissions

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    # Permissions of every app exist before any is granted, whatever order apps migrate in.
    for config in global_apps.get_app_configs():
        create_permissions(config, verbosity=0, using=using, apps=global_apps)
    all_perms = {
        f"{app_label}.{codename}": pk
        for pk, app_label, codename in Permission.objects.using(using).values_list(
            "pk", "content_type__app_label", "codename"
        )
    }
    for role, patterns in declared_grants().items():
        group, _ = Group.objects.using(using).get_or_create(name=role)
        wanted = {pk for name, pk in all_perms.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)}
        group.permissions.add(*wanted)
