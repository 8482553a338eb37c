import pytest
from django.contrib.auth.models import Group

from access.roles import ROLES

pytestmark = pytest.mark.django_db


def test_every_role_exists_as_a_group():
    assert set(Group.objects.filter(name__in=ROLES).values_list("name", flat=True)) == set(ROLES)


def perms(role: str) -> set[str]:
    group = Group.objects.get(name=role)
    return {f"{app}.{code}" for app, code in group.permissions.values_list("content_type__app_label", "codename")}


def test_only_the_customer_service_lead_may_see_personal_data():
    holders = {role for role in ROLES if "profiles.see_personal_data" in perms(role)}
    assert holders == {"Customer service lead"}


def test_customer_service_may_look_up_profiles_but_not_manage():
    granted = perms("Customer service")
    assert "profiles.lookup_profile" in granted
    assert "access.scope_manage" not in granted


def test_analyst_is_read_only():
    granted = perms("Analyst")
    assert granted, "the analyst role grants something"
    assert all(code.split(".")[1].startswith(("view_", "scope_profiles_read")) for code in granted)


def test_operations_manages_tags_but_cannot_read_the_audit_of_keys_it_cannot_create():
    granted = perms("Operations")
    assert {"profiles.add_tag", "profiles.change_tag", "access.scope_manage"} <= granted
    assert "access.add_apikey" not in granted
