"""The materials API: create, version, refuse bad templates with their line, approve (an
Operations lead only), freeze, preview, and the schema."""

from __future__ import annotations

import pytest

from access.models import AuditEntry
from materials.models import MaterialVersion, VersionStatus
from tests.factories.materials import MaterialFactory, MaterialVersionFactory
from tests.factories.profiles import ProfileFactory

pytestmark = pytest.mark.django_db


def _material(client, **body) -> dict:
    response = client.post("/api/v1/materials", {"name": "Welcome", "channel": "sms", **body}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def test_create_a_material_and_number_its_versions(api_client):
    material = _material(api_client, tags=["welcome", "q4"])
    assert material["channel"] == "sms" and material["tags"] == ["q4", "welcome"] and material["versions"] == []
    first = api_client.post(
        f"/api/v1/materials/{material['id']}/versions",
        {"body": "Hi {{ name }}", "defaults": {"name": "friend"}},
        format="json",
    )
    second = api_client.post(f"/api/v1/materials/{material['id']}/versions", {"body": "Hello"}, format="json")
    assert (first.status_code, second.status_code) == (201, 201)
    assert (first.json()["number"], second.json()["number"]) == (1, 2)
    assert first.json()["status"] == "draft" and first.json()["defaults"] == {"name": "friend"}
    detail = api_client.get(f"/api/v1/materials/{material['id']}").json()
    assert [v["number"] for v in detail["versions"]] == [2, 1] and detail["latest_version"] == 2


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ("Hi\n{% if name %}\nno end", 2, "endif"),  # the block left open
        ("Hi {{ name }}\n{{ points }}", 2, "'points'"),
        ("Hi {{ name }", 1, "unexpected"),
    ],
)
def test_a_bad_template_is_refused_at_save_with_the_line_and_the_reason(api_client, body, line, words):
    material = _material(api_client)
    response = api_client.post(f"/api/v1/materials/{material['id']}/versions", {"body": body}, format="json")
    assert response.status_code == 400
    data = response.json()
    assert data["reason"] == "INVALID_TEMPLATE"
    assert data["problems"][0]["field"] == "body" and data["problems"][0]["line"] == line
    assert words in data["problems"][0]["reason"]
    assert not MaterialVersion.objects.filter(material_id=material["id"]).exists()


def test_a_version_over_the_channels_limit_is_refused_at_save(api_client, settings):
    settings.OPSLOOP_SMS_MAX_SEGMENTS = 1
    material = _material(api_client)
    response = api_client.post(f"/api/v1/materials/{material['id']}/versions", {"body": "好" * 71}, format="json")
    assert response.status_code == 400
    assert "2 segments; at most 1" in response.json()["problems"][0]["reason"]


def test_bad_fields_get_a_400_naming_them(api_client):
    assert api_client.post("/api/v1/materials", {"name": "x", "channel": "fax"}, format="json").status_code == 400
    response = api_client.post(
        "/api/v1/materials", {"name": "x", "channel": "sms", "tags": ["no spaces"]}, format="json"
    )
    assert response.status_code == 400 and "tags" in response.json()
    material = _material(api_client)
    response = api_client.post(
        f"/api/v1/materials/{material['id']}/versions", {"body": "x", "defaults": {"1bad": "x"}}, format="json"
    )
    assert response.status_code == 400 and "defaults" in response.json()
    assert api_client.get("/api/v1/materials/999999").status_code == 404
    assert api_client.get("/api/v1/materials/abc").status_code == 404
    assert api_client.post("/api/v1/material-versions/999999/preview", {}, format="json").status_code == 404


def test_only_an_operations_lead_approves_and_an_approved_version_is_frozen(api_client, staff_client):
    version = MaterialVersionFactory(material=MaterialFactory(channel="sms"), title="", body="Hi {{ name }}")
    url = f"/api/v1/material-versions/{version.pk}"
    assert api_client.post(f"{url}/approve").status_code == 403  # an API key, even with `manage`
    assert staff_client("Operations").post(f"{url}/approve").status_code == 403
    lead = staff_client("Operations lead")
    response = lead.post(f"{url}/approve")
    assert response.status_code == 200 and response.json()["status"] == "approved"
    assert response.json()["approved_by"] is not None and response.json()["approved_at"]
    assert AuditEntry.objects.filter(action="materials.version_approved", object_id=str(version.pk)).exists()
    # Approving again changes nothing; editing is refused: a change is a new version.
    assert lead.post(f"{url}/approve").status_code == 200
    response = api_client.patch(url, {"body": "Changed"}, format="json")
    assert response.status_code == 409 and response.json()["reason"] == "VERSION_APPROVED"
    assert MaterialVersion.objects.get(pk=version.pk).body == "Hi {{ name }}"


def test_a_draft_can_be_edited_and_is_checked_again(api_client):
    version = MaterialVersionFactory(material=MaterialFactory(channel="sms"), title="", body="Hi")
    url = f"/api/v1/material-versions/{version.pk}"
    assert api_client.patch(url, {"body": "Hi {{ name }}"}, format="json").status_code == 200
    response = api_client.patch(url, {"body": "Hi {{ nope }}"}, format="json")
    assert response.status_code == 400 and response.json()["problems"][0]["line"] == 1
    assert MaterialVersion.objects.get(pk=version.pk).body == "Hi {{ name }}"


def test_approval_checks_the_limits_in_force_then(settings, staff_client):
    version = MaterialVersionFactory(material=MaterialFactory(channel="push"), title="A title of some length")
    settings.OPSLOOP_PUSH_TITLE_MAX_CHARS = 10
    response = staff_client("Operations lead").post(f"/api/v1/material-versions/{version.pk}/approve")
    assert response.status_code == 400 and response.json()["problems"][0]["field"] == "title"
    assert MaterialVersion.objects.get(pk=version.pk).status == VersionStatus.DRAFT


def test_preview_renders_for_the_chosen_person_or_says_why_it_cannot(api_client):
    version = MaterialVersionFactory(
        material=MaterialFactory(channel="sms"),
        title="",
        body="Hi {{ name }} in {{ city }}",
        defaults={"name": "friend"},
    )
    ProfileFactory(user_id="ann", name="Ann", city="Chengdu")
    ProfileFactory(user_id="bob", name="", city="")
    url = f"/api/v1/material-versions/{version.pk}/preview"
    ann = api_client.post(url, {"user_id": "ann"}, format="json").json()
    assert ann["rendered"] == {"body": "Hi Ann in Chengdu"} and ann["error"] == ""
    assert ann["sms"] == {"encoding": "GSM-7", "characters": 17, "segments": 1}
    bob = api_client.post(url, {"user_id": "bob"}, format="json").json()
    assert bob["error"] == "MISSING_VALUE: no value for 'city' and no default"
    sample = api_client.post(url, {}, format="json").json()
    assert sample["rendered"]["body"] == "Hi Alex Chen in Shanghai"
    response = api_client.post(url, {"user_id": "nobody"}, format="json")
    assert response.status_code == 404 and response.json()["reason"] == "PROFILE_NOT_FOUND"


def test_list_filters_by_channel_and_tag_in_fixed_queries(api_client, django_assert_num_queries):
    for i in range(6):
        material = MaterialFactory(channel="sms" if i % 2 else "push", tags=["a"] if i < 3 else ["b"])
        MaterialVersionFactory(material=material)
    assert api_client.get("/api/v1/materials?channel=sms").json()["count"] == 3
    assert api_client.get("/api/v1/materials?tag=a").json()["count"] == 3
    assert api_client.get("/api/v1/materials?tag=a&channel=push").json()["count"] == 2
    # The count and the page, owners joined, however many rows (the key is cached).
    with django_assert_num_queries(2):
        assert api_client.get("/api/v1/materials").json()["count"] == 6


def test_the_schema_describes_the_materials_endpoints(api_client):
    paths = api_client.get("/api/schema/?format=json").json()["paths"]
    for path in (
        "/api/v1/materials",
        "/api/v1/materials/{id}/versions",
        "/api/v1/materials/{id}/history",
        "/api/v1/material-versions/{id}/approve",
        "/api/v1/material-versions/{id}/preview",
    ):
        assert path in paths
    assert "400" in paths["/api/v1/materials/{id}/versions"]["post"]["responses"]


def test_a_preview_for_a_person_needs_the_profiles_read_scope(make_api_client):
    version = MaterialVersionFactory(material=MaterialFactory(channel="sms"), title="", body="Hi {{ name }}")
    ProfileFactory(user_id="ann", name="Ann")
    url = f"/api/v1/material-versions/{version.pk}/preview"
    manage_only = make_api_client("manage")
    response = manage_only.post(url, {"user_id": "ann"}, format="json")
    assert response.status_code == 403 and "Ann" not in response.content.decode()
    # Unknown or known, the answer is the same: no probing for who exists.
    assert manage_only.post(url, {"user_id": "nobody"}, format="json").status_code == 403
    assert manage_only.post(url, {}, format="json").json()["rendered"]["body"] == "Hi Alex Chen"
    reader = make_api_client("manage", "profiles:read")
    assert reader.post(url, {"user_id": "ann"}, format="json").json()["rendered"]["body"] == "Hi Ann"


def test_a_staff_members_preview_for_a_person_is_recorded_a_keys_is_not(make_api_client, make_staff):
    from rest_framework.test import APIClient

    from profiles.models import LookupRecord

    version = MaterialVersionFactory(material=MaterialFactory(channel="sms"), title="", body="Hi {{ name }}")
    ProfileFactory(user_id="ann", name="Ann")
    url = f"/api/v1/material-versions/{version.pk}/preview"
    assert make_api_client("manage", "profiles:read").post(url, {"user_id": "ann"}, format="json").status_code == 200
    assert not LookupRecord.objects.exists()
    session = APIClient()
    session.force_login(make_staff("Operations", "Analyst"))  # manage, and profiles:read
    assert session.post(url, {"user_id": "ann"}, format="json").json()["rendered"]["body"] == "Hi Ann"
    (record,) = LookupRecord.objects.all()
    assert record.user_ids == ["ann"] and record.channel == "api"
