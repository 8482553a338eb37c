"""Personal data only for those allowed, and always recorded: searching the Profiles or Identities
list by phone, e-mail or identity needs the lookup permission and writes a lookup record, as do a
profile's own page and the profile API with a staff session; masking reads the viewer from the
rows of the viewer's own request, never from the shared ModelAdmin."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import Client, RequestFactory

from profiles.models import Identity, IdentityKind, LookupRecord, Profile
from tests.factories.profiles import IdentityFactory, ProfileFactory

pytestmark = pytest.mark.django_db

PHONE = "+8613812345678"


@pytest.fixture
def person():
    profile = ProfileFactory(user_id="caller-1", phone=PHONE, email="zhang.wei@example.com")
    IdentityFactory(profile=profile, kind=IdentityKind.PHONE, value=PHONE)
    return profile


def _client(make_staff, *roles):
    user = make_staff(*roles)
    client = Client()
    client.force_login(user)
    return client, user


@pytest.mark.parametrize("role", ["Operations", "Analyst"])
def test_roles_without_the_lookup_permission_cannot_search_by_phone(make_staff, person, role):
    client, _user = _client(make_staff, role)
    for url in ("/admin/profiles/profile/", "/admin/profiles/identity/"):
        response = client.get(url, {"q": PHONE})
        if response.status_code == 403:
            continue  # the list itself is closed to the role
        assert response.status_code == 200
        assert "caller-1" not in response.content.decode(), url
    # Their own exact user-id search in the Profiles list still works.
    response = client.get("/admin/profiles/profile/", {"q": "caller-1"})
    assert response.status_code in (200, 403)


def test_a_customer_service_search_of_the_profiles_list_is_recorded(make_staff, person):
    client, user = _client(make_staff, "Customer service")
    response = client.get("/admin/profiles/profile/", {"q": "138 1234 5678"})
    assert response.status_code == 200
    assert "caller-1" in response.content.decode()
    record = LookupRecord.objects.get(staff=user)
    assert record.user_ids == ["caller-1"] and "138 1234 5678" in record.query


def test_an_identity_search_is_recorded(make_staff, person):
    user = make_staff(superuser=True)  # no role is given the Identities list; a superuser is
    client = Client()
    client.force_login(user)
    response = client.get("/admin/profiles/identity/", {"q": PHONE})
    assert response.status_code == 200
    assert LookupRecord.objects.get(staff=user).user_ids == ["caller-1"]


def test_the_profile_page_is_recorded(make_staff, person):
    client, user = _client(make_staff, "Customer service")
    response = client.get(f"/admin/profiles/profile/{person.pk}/change/")
    assert response.status_code == 200
    assert PHONE not in response.content.decode()  # masked for the role
    assert LookupRecord.objects.get(staff=user).profile_ids == [person.pk]


def test_the_profile_api_with_a_staff_session_is_recorded(make_staff, person):
    from rest_framework.test import APIClient

    user = make_staff("Customer service")
    client = APIClient()
    client.force_login(user)
    response = client.get("/api/v1/profiles/caller-1")
    assert response.status_code == 200
    assert LookupRecord.objects.get(staff=user).user_ids == ["caller-1"]


def test_masking_does_not_follow_another_request_on_the_shared_admin(make_staff, person):
    """Two requests served at once by the one ModelAdmin: the agent's rows stay masked even when
    a lead's request came through the same instance in between."""
    agent, lead = make_staff("Customer service"), make_staff("Customer service lead")
    factory = RequestFactory()
    agent_request, lead_request = factory.get("/admin/profiles/profile/"), factory.get("/admin/profiles/profile/")
    agent_request.user, lead_request.user = agent, lead
    profiles = admin.site._registry[Profile]
    agent_rows = list(profiles.get_queryset(agent_request))
    lead_rows = list(profiles.get_queryset(lead_request))
    assert profiles.shown_phone(agent_rows[0]) != PHONE
    assert profiles.shown_phone(lead_rows[0]) == PHONE
    identities = admin.site._registry[Identity]
    agent_ids = list(identities.get_queryset(agent_request))
    list(identities.get_queryset(lead_request))
    assert identities.shown_value(agent_ids[0]) != PHONE


def test_the_lookup_masks_identifiers_and_personal_event_values_for_customer_service(staff_client, person):
    from tests.factories.profiles import ingest

    IdentityFactory(profile=person, kind=IdentityKind.OPENID, value="oAbCdEf123456")
    IdentityFactory(profile=person, kind=IdentityKind.UNIONID, value="uNiOnId987654")
    IdentityFactory(profile=person, kind=IdentityKind.DEVICE, value="DEVICE-0001-ABCD")
    ingest(
        [
            {
                "user_id": "caller-1",
                "name": "address_saved",
                "properties": {
                    "receiver_phone": "+8613912345678",
                    "contact": {"email": "zhang.wei@example.com"},
                    "device_id": "DEVICE-0001-ABCD",
                    "order_id": "20261206000001",
                },
            }
        ]
    )
    secrets = ["oAbCdEf123456", "uNiOnId987654", "DEVICE-0001-ABCD", "+8613912345678", "zhang.wei@example.com"]
    masked = staff_client("Customer service").get("/api/v1/support/lookup", {"q": "caller-1"})
    assert masked.status_code == 200
    text = masked.content.decode()
    for secret in secrets:
        assert secret not in text, secret
    assert "20261206000001" in text  # business values stay readable
    full = staff_client("Customer service lead").get("/api/v1/support/lookup", {"q": "caller-1"}).content.decode()
    for secret in secrets:
        assert secret in full, secret
