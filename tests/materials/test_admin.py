"""The admin of the material library: a version's template refused with its line at save, a
preview for a chosen person, a test send through the real channel, approval by a lead only,
and the record across campaigns with its chart."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from access.models import AuditEntry
from campaigns import services as campaign_services
from campaigns.models import CampaignStatus, ChannelKind, Delivery, Variant
from materials.models import Material, MaterialVersion, VersionStatus
from tests.campaigns.receiver import Receiver
from tests.factories.campaigns import CampaignFactory, ChannelFactory, make_profiles
from tests.factories.materials import MaterialFactory, MaterialVersionFactory
from tests.factories.profiles import ProfileFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client, make_staff):
    client.force_login(make_staff("Operations"))
    return client


@pytest.fixture
def lead(client, make_staff):
    client.force_login(make_staff("Operations", "Operations lead"))
    return client


def test_an_operator_creates_a_material_owned_by_them(operator):
    response = operator.post(
        reverse("admin:materials_material_add"),
        {
            "name": "Spring",
            "channel": "sms",
            "tags": "spring,q2",
            "description": "",
            "versions-TOTAL_FORMS": 0,
            "versions-INITIAL_FORMS": 0,
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    material = Material.objects.get(name="Spring")
    assert material.tags == ["q2", "spring"] and material.owner is not None
    assert AuditEntry.objects.filter(action="materials.material_created", object_id=str(material.pk)).exists()


def test_a_bad_template_is_refused_in_the_form_with_its_line(operator):
    material = MaterialFactory(channel="sms")
    response = operator.post(
        reverse("admin:materials_materialversion_add"),
        {
            "material": material.pk,
            "title": "",
            "body": "Hi {{ name }}\n{{ points }}",
            "html": "",
            "url": "",
            "defaults": "{}",
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "Line 2: Unknown variable 'points'" in errors["body"][0]
    assert not MaterialVersion.objects.exists()
    response = operator.post(
        reverse("admin:materials_materialversion_add"),
        {
            "material": material.pk,
            "title": "",
            "body": "Hi {{ name }}",
            "html": "",
            "url": "",
            "defaults": '{"name": "friend"}',
        },
    )
    assert response.status_code == 302
    version = MaterialVersion.objects.get()
    assert (version.number, version.status, version.defaults) == (1, "draft", {"name": "friend"})


def test_the_preview_renders_for_the_chosen_person(operator):
    version = MaterialVersionFactory(material=MaterialFactory(channel="sms"), body="Hi {{ name }} in {{ city }}")
    ProfileFactory(user_id="ann", name="Ann", city="Xiamen")
    ProfileFactory(user_id="bob", name="Bob", city="")
    url = reverse("admin:materials_materialversion_preview", args=[version.pk])
    page = operator.get(url, {"user_id": "ann"}).content.decode()
    assert "Hi Ann in Xiamen" in page and "16 GSM-7 characters, 1 segment" in page
    # Bob has no city; the version's default for it is used.
    assert "Hi Bob in your city" in operator.get(url, {"user_id": "bob"}).content.decode()


def test_send_a_test_goes_through_the_real_channel_to_ones_own_device(operator):
    version = MaterialVersionFactory(material=MaterialFactory(channel="push"), title="Hi {{ name }}", body="B")
    ProfileFactory(user_id="me", name="Me", city="Here", push_opt_in=True)
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        url = reverse("admin:materials_materialversion_preview", args=[version.pk])
        response = operator.post(url, {"user_id": "me", "send_test": "1"})
    assert response.status_code == 302
    (body,) = gateway.requests
    assert body["user_id"] == "me" and body["title"] == "[TEST] Hi Me" and body["test"] is True
    assert AuditEntry.objects.filter(action="campaigns.material_test_message_sent", object_id=str(version.pk)).exists()


def test_only_a_lead_approves_and_then_the_version_is_read_only(operator, lead, make_staff, client):
    version = MaterialVersionFactory(material=MaterialFactory(channel="sms"), title="", body="Hi {{ name }}")
    change = reverse("admin:materials_materialversion_change", args=[version.pk])
    approve = reverse("admin:materials_materialversion_approve", args=[version.pk])
    client.force_login(make_staff("Operations"))
    assert "Approve for sending" not in client.get(change).content.decode()
    assert client.post(approve).status_code == 403
    client.force_login(make_staff("Operations", "Operations lead"))
    assert "Approve for sending" in client.get(change).content.decode()
    assert client.post(approve).status_code == 302
    version.refresh_from_db()
    assert version.status == VersionStatus.APPROVED and version.approved_by is not None
    form = client.get(change).context["adminform"]
    assert {"body", "defaults"} <= set(form.readonly_fields)


def test_the_material_page_shows_its_campaigns_with_a_chart(operator):
    make_profiles(6, name="Ed", city="Nanjing")
    version = MaterialVersionFactory(approved=True, material=MaterialFactory(channel="push"))
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign = CampaignFactory(
            name="Autumn push", status=CampaignStatus.RUNNING, holdout_percent=Decimal(0), variants=[("A", 100)]
        )
        Variant.objects.filter(campaign=campaign).update(material_version=version)
        campaign_services.start_send(campaign_id=campaign.pk)
        campaign_services.deliver(delivery_ids=list(Delivery.objects.values_list("id", flat=True)))
    page = operator.get(reverse("admin:materials_material_performance", args=[version.material_id]))
    html = page.content.decode()
    assert page.status_code == 200 and 'id="material-chart"' in html and "Autumn push" in html
    assert page.context["rows"][0]["sent"] == len(gateway.requests) == 6


def test_a_test_send_needs_the_send_permission_and_a_recipient_who_consented(client, make_staff):
    from django.contrib.auth.models import Permission

    version = MaterialVersionFactory(material=MaterialFactory(channel="push"), title="Hi {{ name }}", body="B")
    ProfileFactory(user_id="me", name="Me", city="Here", push_opt_in=True)
    ProfileFactory(user_id="customer", name="Cu", city="There", push_opt_in=False)
    url = reverse("admin:materials_materialversion_preview", args=[version.pk])
    editor = make_staff("Operations")
    editor.user_permissions.remove(*Permission.objects.filter(codename="send_campaign"))
    editor.groups.clear()
    editor.user_permissions.add(*Permission.objects.filter(content_type__app_label="materials"))
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        # May edit materials, may not send: refused.
        client.force_login(editor)
        assert client.post(url, {"user_id": "me", "send_test": "1"}).status_code == 403
        # May send, but to a customer who did not consent to the channel: refused with the reason.
        client.force_login(make_staff("Operations"))
        response = client.post(url, {"user_id": "customer", "send_test": "1"}, follow=True)
        assert "NO_CONSENT" in response.content.decode()
        assert client.post(url, {"user_id": "me", "send_test": "1"}).status_code == 302
    assert [b["user_id"] for b in gateway.requests] == ["me"]
    refused = AuditEntry.objects.filter(action="campaigns.material_test_message_sent", object_id=str(version.pk))
    assert refused.count() == 1


def test_a_preview_for_a_person_is_recorded_as_seeing_them(operator):
    from profiles.models import LookupRecord

    version = MaterialVersionFactory(material=MaterialFactory(channel="sms"), body="Hi {{ name }}")
    ProfileFactory(user_id="ann", name="Ann")
    url = reverse("admin:materials_materialversion_preview", args=[version.pk])
    assert operator.get(url).status_code == 200  # sample values: nobody seen, nothing recorded
    assert not LookupRecord.objects.exists()
    assert "Hi Ann" in operator.get(url, {"user_id": "ann"}).content.decode()
    (record,) = LookupRecord.objects.all()
    assert record.user_ids == ["ann"] and record.query == "material preview: ann" and record.staff_username


def test_a_preview_for_a_person_needs_the_right_to_see_profiles(client, make_staff):
    from django.contrib.auth.models import Permission

    version = MaterialVersionFactory(material=MaterialFactory(channel="sms"), body="Hi {{ name }}")
    ProfileFactory(user_id="ann", name="Ann")
    editor = make_staff()
    editor.user_permissions.add(*Permission.objects.filter(content_type__app_label="materials"))
    client.force_login(editor)
    url = reverse("admin:materials_materialversion_preview", args=[version.pk])
    assert client.get(url).status_code == 200
    refused = client.get(url, {"user_id": "ann"})
    assert refused.status_code == 403 and "Ann" not in refused.content.decode()
