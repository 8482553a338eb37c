"""The admin operators and customer service use: lists, filters, search, tag actions with
audit rows, the tag chart, the lookup page, rule recomputation and CSV import/export of tags."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from access.models import AuditEntry
from profiles import services
from profiles.models import IdentityKind, LookupRecord, ProfileTag, Tag, TagChange
from tests.factories.profiles import IdentityFactory, ProfileFactory, TagRuleFactory

pytestmark = pytest.mark.django_db


def admin_client(make_staff, *roles, superuser=False) -> Client:
    client = Client()
    client.force_login(make_staff(*roles, superuser=superuser))
    return client


@pytest.fixture
def people():
    a = ProfileFactory(
        user_id="adm-a",
        city="Shanghai",
        gender="female",
        phone="+8613812345678",
        signup_at=timezone.make_aware(datetime(2026, 3, 5)),
    )
    b = ProfileFactory(
        user_id="adm-b", city="Beijing", gender="male", signup_at=timezone.make_aware(datetime(2026, 4, 5))
    )
    IdentityFactory(profile=b, kind=IdentityKind.EMAIL, value="b@example.com")
    return a, b


def changelist(client, **params):
    response = client.get("/admin/profiles/profile/", params)
    assert response.status_code == 200
    return [p.user_id for p in response.context["cl"].result_list]


def test_profile_list_searches_phone_in_any_format_email_and_user_id(make_staff, people):
    # Searching by phone or e-mail is the lookup permission's (customer service), and recorded.
    client = admin_client(make_staff, "Customer service")
    assert changelist(client, q="138 1234 5678") == ["adm-a"]
    assert changelist(client, q="B@Example.com") == ["adm-b"]
    assert changelist(client, q="adm-b") == ["adm-b"]
    assert changelist(client, q="adm") == []
    # Operations finds a profile by its exact user id only.
    operations = admin_client(make_staff, "Operations")
    assert changelist(operations, q="138 1234 5678") == []
    assert changelist(operations, q="adm-b") == ["adm-b"]


def test_profile_list_filters_by_tag_city_gender_and_signup_month(make_staff, people):
    services.tag_profiles(tag_name="vip", profile_ids=[people[1].id])
    client = admin_client(make_staff, "Operations")
    assert changelist(client, tag="vip") == ["adm-b"]
    assert changelist(client, city="Shanghai") == ["adm-a"]
    assert changelist(client, gender__exact="male") == ["adm-b"]
    assert changelist(client, signup_month="2026-03") == ["adm-a"]


def test_phones_are_masked_in_the_list_for_staff_without_the_personal_data_right(make_staff, people):
    body = admin_client(make_staff, "Customer service").get("/admin/profiles/profile/").content.decode()
    assert "138****5678" in body and "+8613812345678" not in body
    lead = admin_client(make_staff, "Customer service lead").get("/admin/profiles/profile/").content.decode()
    assert "+8613812345678" in lead


def test_tag_actions_change_members_record_history_and_audit(make_staff, people):
    client = admin_client(make_staff, "Operations")
    ids = [str(p.id) for p in people]
    client.post("/admin/profiles/profile/", {"action": "add_tag", "_selected_action": ids, "tag_name": "callback-list"})
    assert ProfileTag.objects.filter(tag__name="callback-list").count() == 2
    client.post(
        "/admin/profiles/profile/", {"action": "remove_tag", "_selected_action": ids[:1], "tag_name": "callback-list"}
    )
    assert ProfileTag.objects.filter(tag__name="callback-list").count() == 1
    assert sorted(TagChange.objects.values_list("action", flat=True)) == ["added", "added", "removed"]
    assert list(AuditEntry.objects.order_by("id").values_list("action", flat=True)) == [
        "profiles.tag_added",
        "profiles.tag_removed",
    ]


def test_tag_page_charts_members_over_time_from_the_change_history(make_staff, people):
    services.tag_profiles(tag_name="fans", profile_ids=[p.id for p in people])
    tag = Tag.objects.get(name="fans")
    # One member left two days ago: the day before that, the tag had one more member than today
    # minus today's gains.
    TagChange.objects.filter(tag=tag).update(at=timezone.now() - timedelta(days=5))
    services.untag_profiles(tag_name="fans", profile_ids=[people[0].id])
    TagChange.objects.filter(tag=tag, action="removed").update(at=timezone.now() - timedelta(days=2))
    response = admin_client(make_staff, superuser=True).get(f"/admin/profiles/tag/{tag.id}/change/")
    assert response.status_code == 200
    history = response.context["member_history"]
    counts = dict(zip(history["labels"], history["counts"], strict=True))
    day = lambda n: (timezone.now() - timedelta(days=n)).date().isoformat()  # noqa: E731
    assert (counts[day(6)], counts[day(5)], counts[day(3)], counts[day(2)], counts[day(0)]) == (0, 2, 2, 1, 1)
    assert b"opsloop/vendor/chart.umd.min.js" in response.content


def test_lookup_page_shows_the_caller_and_records_the_search(make_staff, people):
    client = admin_client(make_staff, "Customer service")
    response = client.get("/admin/profiles/profile/lookup/", {"q": "13812345678"})
    assert response.status_code == 200
    assert [r["user_id"] for r in response.context["results"]] == ["adm-a"]
    assert b"138****5678" in response.content and b"+8613812345678" not in response.content
    record = LookupRecord.objects.get()
    assert (record.channel, record.user_ids) == ("admin", ["adm-a"])
    assert client.get("/admin/profiles/profile/lookup/", {"q": "x"}).context["error"]


def test_lookup_page_is_closed_to_staff_without_the_lookup_permission(make_staff):
    assert admin_client(make_staff, "Analyst").get("/admin/profiles/profile/lookup/", {"q": "adm-a"}).status_code == 403


def test_lookup_records_are_visible_to_superusers_only_and_never_editable(make_staff, people):
    admin_client(make_staff, "Customer service").get("/admin/profiles/profile/lookup/", {"q": "adm-a"})
    record = LookupRecord.objects.get()
    lead = admin_client(make_staff, "Customer service lead")
    assert lead.get("/admin/profiles/lookuprecord/").status_code == 403
    boss = admin_client(make_staff, superuser=True)
    assert boss.get("/admin/profiles/lookuprecord/").status_code == 200
    page = boss.get(f"/admin/profiles/lookuprecord/{record.id}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert boss.post(f"/admin/profiles/lookuprecord/{record.id}/delete/", {"post": "yes"}).status_code == 403
    assert LookupRecord.objects.count() == 1


def test_recompute_action_queues_the_rule_after_commit_and_audits(
    make_staff, people, django_capture_on_commit_callbacks
):
    rule = TagRuleFactory(tag_name="sh", conditions=[{"trait": "city", "op": "eq", "value": "Shanghai"}])
    client = admin_client(make_staff, superuser=True)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        client.post("/admin/profiles/tagrule/", {"action": "recompute_now", "_selected_action": [str(rule.id)]})
    assert len(callbacks) == 1
    assert AuditEntry.objects.filter(action="profiles.tag_rule_recompute_requested", object_id=str(rule.id)).exists()


def test_rule_form_refuses_invalid_conditions(make_staff):
    client = admin_client(make_staff, superuser=True)
    response = client.post(
        "/admin/profiles/tagrule/add/",
        {
            "name": "bad",
            "kind": "rule",
            "is_active": "on",
            "tag_name": "bad",
            "conditions": '[{"trait": "city", "op": "like", "value": "x"}]',
            "category_property": "category",
            "window_days": 30,
            "min_count": 5,
            "p_value_threshold": 0.01,
            "tag_prefix": "prefers_",
        },
    )
    assert response.status_code == 200
    assert "Condition 1" in response.content.decode()


def test_tags_export_and_import_as_csv_with_history(make_staff, people):
    services.tag_profiles(tag_name="exported", profile_ids=[people[0].id], score=0.5)
    client = admin_client(make_staff, superuser=True)
    exported = client.post(
        "/admin/profiles/profiletag/export/",
        {
            "format": "0",
            "resource": "0",
            **{
                f"profiletagresource_{f}": "on"
                for f in ("user_id", "tag", "category", "score", "source", "computed_at")
            },
        },
    )
    assert exported.status_code == 200, exported.content[:500]
    assert b"adm-a,exported" in exported.content

    csv = b"user_id,tag,score\nadm-b,imported-vip,0.9\nnobody,imported-vip,0.1\n"
    step1 = client.post(
        "/admin/profiles/profiletag/import/",
        {"format": "0", "resource": "0", "import_file": SimpleUploadedFile("tags.csv", csv, content_type="text/csv")},
    )
    assert step1.status_code == 200
    # The unknown user id is a row error; the preview does not let a broken file in.
    assert not ProfileTag.objects.filter(tag__name="imported-vip").exists()

    good = b"user_id,tag,score\nadm-b,imported-vip,0.9\n"
    step1 = client.post(
        "/admin/profiles/profiletag/import/",
        {"format": "0", "resource": "0", "import_file": SimpleUploadedFile("tags.csv", good, content_type="text/csv")},
    )
    confirm = step1.context["confirm_form"]
    client.post("/admin/profiles/profiletag/process_import/", {**confirm.initial, "resource": "0"})
    row = ProfileTag.objects.get(tag__name="imported-vip")
    assert (row.profile.user_id, row.score, row.source) == ("adm-b", 0.9, "import")
    assert TagChange.objects.filter(tag__name="imported-vip", action="added", source="import").count() == 1
    assert AuditEntry.objects.filter(action="profiles.tags_imported").exists()


def test_customer_service_may_neither_tag_nor_import_tags(make_staff, people):
    client = admin_client(make_staff, "Customer service")
    client.post(
        "/admin/profiles/profile/", {"action": "add_tag", "_selected_action": [str(people[0].id)], "tag_name": "x"}
    )
    assert not ProfileTag.objects.exists()
    assert client.get("/admin/profiles/profiletag/import/").status_code == 403
