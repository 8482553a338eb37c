import hashlib
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from access import keycache, services
from access.models import ApiKey, AuditEntry

pytestmark = pytest.mark.django_db


def test_created_key_is_stored_only_as_its_sha256_digest():
    issued = services.create_api_key(name="shop", scopes=["events:write"])
    row = ApiKey.objects.get(pk=issued.api_key.pk)
    assert issued.plaintext not in (row.digest, row.prefix, row.name)
    assert row.digest == hashlib.sha256(issued.plaintext.encode()).hexdigest()
    assert issued.plaintext.split("_")[1] == row.prefix


def test_create_api_key_command_prints_the_key_once_and_it_works():
    out = StringIO()
    call_command("create_api_key", "--name", "crm-sync", "--scopes", "profiles:read,manage", stdout=out)
    key = out.getvalue().strip()
    assert ApiKey.objects.get(name="crm-sync").scopes == ["manage", "profiles:read"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    response = client.get("/api/v1/auth/whoami")
    assert response.status_code == 200
    assert response.json() == {"kind": "api_key", "name": "crm-sync", "scopes": ["manage", "profiles:read"]}


@pytest.mark.parametrize("scopes", ["", "events:write,teleport", "root"])
def test_create_api_key_command_refuses_unknown_or_missing_scopes(scopes):
    with pytest.raises(CommandError):
        call_command("create_api_key", "--name", "bad", "--scopes", scopes, stdout=StringIO())
    assert not ApiKey.objects.filter(name="bad").exists()


def test_create_api_key_command_refuses_a_taken_name():
    services.create_api_key(name="twice", scopes=["manage"])
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_api_key", "--name", "twice", "--scopes", "manage", stdout=StringIO())


def test_request_without_credentials_is_401():
    response = APIClient().get("/api/v1/auth/whoami")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Api-Key"


@pytest.mark.parametrize("header", ["Api-Key nonsense", "Api-Key olk_deadbeef_wrongsecret", "Api-Key "])
def test_invalid_key_is_401(header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    assert client.get("/api/v1/auth/whoami").status_code == 401


def test_revoked_key_is_401_and_revocation_is_audited(make_api_client):
    client = make_api_client("manage")
    assert client.get("/api/v1/auth/whoami").status_code == 200
    services.revoke_api_key(api_key=client.api_key)
    assert client.get("/api/v1/auth/whoami").status_code == 401
    assert AuditEntry.objects.filter(action="access.api_key_revoked", object_id=str(client.api_key.pk)).exists()


def test_use_of_a_key_records_last_used_time(make_api_client):
    client = make_api_client("manage")
    assert client.api_key.last_used_at is None
    client.get("/api/v1/auth/whoami")
    client.api_key.refresh_from_db()
    assert client.api_key.last_used_at is not None


def test_key_digest_lookup_rejects_a_key_with_the_right_prefix_but_wrong_secret(make_api_client):
    client = make_api_client("manage")
    forged = APIClient()
    forged.credentials(HTTP_AUTHORIZATION=f"Api-Key olk_{client.api_key.prefix}_not-the-secret")
    assert forged.get("/api/v1/auth/whoami").status_code == 401


def test_a_recently_used_key_costs_no_write(make_api_client, django_assert_num_queries, settings):
    settings.OPSLOOP_API_KEY_CACHE_SECONDS = 0  # look the key up each time
    client = make_api_client("manage")
    client.get("/api/v1/auth/whoami")  # first use records the time
    with django_assert_num_queries(1):  # the key lookup only
        assert client.get("/api/v1/auth/whoami").status_code == 200


def test_a_hot_key_costs_no_query_at_all(make_api_client, django_assert_num_queries):
    client = make_api_client("manage")
    client.get("/api/v1/auth/whoami")  # looked up, remembered, last use recorded
    with django_assert_num_queries(0):
        assert client.get("/api/v1/auth/whoami").status_code == 200


def test_a_key_revoked_in_another_process_stops_working_within_the_cache_time(make_api_client, settings):
    settings.OPSLOOP_API_KEY_CACHE_SECONDS = 0.5
    client = make_api_client("manage")
    assert client.get("/api/v1/auth/whoami").status_code == 200
    # What another worker's revoke leaves behind: the row changed, this process's cache untouched.
    ApiKey.objects.filter(pk=client.api_key.pk).update(revoked_at=timezone.now())
    assert keycache.cached(client.api_key.digest) is not None
    deadline = time.monotonic() + 5
    while client.get("/api/v1/auth/whoami").status_code == 200:
        assert time.monotonic() < deadline, "a revoked key kept working past the cache time"
        time.sleep(0.1)
    assert client.get("/api/v1/auth/whoami").json()["detail"] == "API key revoked."


def test_an_unknown_key_is_not_remembered(make_api_client):
    client = make_api_client("manage")
    forged = f"olk_{client.api_key.prefix}_not-the-secret"
    APIClient(HTTP_AUTHORIZATION=f"Api-Key {forged}").get("/api/v1/auth/whoami")
    assert keycache.cached(services.digest_of(forged)) is None
