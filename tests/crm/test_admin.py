"""The admin pages operators use: lists with filters, the distribution, tier movements and the
audited actions."""

from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse
from django.utils import timezone

from access.models import AuditEntry
from crm import services
from crm.models import CustomerValue, RecomputeRun, ValueTier
from tests.factories.crm import AccountManagerFactory, CustomerFactory, paid_order

pytestmark = pytest.mark.django_db


@pytest.fixture
def population():
    now = timezone.now()
    vip = CustomerFactory(user_id="vip-1")
    for k in range(4):
        paid_order(vip, "800.00", now - timedelta(days=1 + k))
    for n in range(4):
        paid_order(CustomerFactory(user_id=f"small-{n}"), "10.00", now - timedelta(days=120 + n))
    CustomerFactory(user_id="browser-1", last_seen_at=now - timedelta(days=200))
    services.recompute_customer_values(now=now)
    return vip


def test_the_customer_value_list_filters_by_tier_segment_and_stage(admin_client, population):
    url = reverse("admin:crm_customervalue_changelist")
    core = ValueTier.objects.get(slug="core")

    by_tier = admin_client.get(url, {"tier__id__exact": core.pk})
    by_segment = admin_client.get(url, {"segment__exact": "important_value"})
    by_stage = admin_client.get(url, {"lifecycle__exact": "churned"})

    assert [v.profile.user_id for v in by_tier.context["cl"].result_list] == ["vip-1"]
    assert [v.profile.user_id for v in by_segment.context["cl"].result_list] == ["vip-1"]
    assert [v.profile.user_id for v in by_stage.context["cl"].result_list] == ["browser-1"]


def test_the_distribution_page_shows_the_top_fifths_share_and_a_chart(admin_client, population):
    response = admin_client.get(reverse("admin:crm_customervalue_distribution"))

    assert response.status_code == 200
    data = response.context["data"]
    assert data["top20_share"] == pytest.approx(3200 / 3240)
    body = response.content.decode()
    assert "opsloop/vendor/chart.umd.min.js" in body and 'id="crm-charts"' in body
    assert "99 %" in body  # 3200 / 3240, rounded, as every page writes percentages


def test_the_movement_page_builds_the_matrix_between_two_dates(admin_client, population):
    today = timezone.localdate()
    response = admin_client.get(
        reverse("admin:crm_customervalue_movements"),
        {"start": (today - timedelta(days=3)).isoformat(), "end": today.isoformat()},
    )

    assert response.status_code == 200
    rows = {row["key"]: row for row in response.context["result"]["rows"]}
    # Nothing existed three days ago: every profile comes from "(none)".
    assert rows[""]["total"] == CustomerValue.objects.count()


def test_the_movement_page_refuses_a_start_after_the_end(admin_client):
    today = timezone.localdate()
    response = admin_client.get(
        reverse("admin:crm_customervalue_movements"),
        {"start": today.isoformat(), "end": (today - timedelta(days=1)).isoformat()},
    )
    assert response.status_code == 200 and response.context["result"] is None
    assert "must not be after" in response.content.decode()


def test_reassigning_from_the_admin_moves_customers_and_is_audited(admin_client, admin_user, population):
    manager = AccountManagerFactory()
    response = admin_client.post(
        reverse("admin:crm_customervalue_changelist"),
        {
            "action": "reassign_account_manager",
            ACTION_CHECKBOX_NAME: [population.pk],
            "apply": "1",
            "manager": manager.pk,
        },
    )

    assert response.status_code == 302
    assert CustomerValue.objects.get(profile=population).account_manager == manager
    assert AuditEntry.objects.filter(action="crm.account_manager_reassigned", actor=admin_user).exists()


def test_reassignment_over_capacity_shows_an_error_and_changes_nothing(admin_client, population):
    full = AccountManagerFactory(capacity=0)
    response = admin_client.post(
        reverse("admin:crm_customervalue_changelist"),
        {"action": "reassign_account_manager", ACTION_CHECKBOX_NAME: [population.pk], "apply": "1", "manager": full.pk},
        follow=True,
    )
    assert "do not fit" in response.content.decode()
    assert CustomerValue.objects.get(profile=population).account_manager is None


def test_recompute_now_queues_a_run_and_is_audited(admin_client, admin_user):
    response = admin_client.post(reverse("admin:crm_customervalue_recompute"))

    assert response.status_code == 302
    run = RecomputeRun.objects.get()
    assert run.status == "queued" and run.requested_by == admin_user
    assert AuditEntry.objects.filter(action="crm.recompute_requested", object_id=str(run.pk)).exists()


def test_an_analyst_may_look_but_not_recompute(client, make_staff, population):
    client.force_login(make_staff("Analyst"))
    assert client.get(reverse("admin:crm_customervalue_distribution")).status_code == 200
    assert client.post(reverse("admin:crm_customervalue_recompute")).status_code == 403
    assert not RecomputeRun.objects.filter(status="queued").exists()


def test_editing_a_tier_is_audited(admin_client, admin_user):
    tier = ValueTier.objects.get(slug="important")
    response = admin_client.post(
        reverse("admin:crm_valuetier_change", args=[tier.pk]),
        {
            "name": "Important",
            "slug": "important",
            "rank": 30,
            "applies_to": "customers",
            "description": "",
            "segments": ["important_development"],
            "gets_account_manager": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    tier.refresh_from_db()
    assert tier.segments == ["important_development"] and tier.gets_account_manager
    assert AuditEntry.objects.filter(action="crm.tier_changed", object_id=str(tier.pk)).exists()


def test_a_scheme_with_silent_after_churned_is_refused_in_the_admin(admin_client):
    response = admin_client.post(
        reverse("admin:crm_scoringscheme_add"),
        {
            "name": "bad",
            "window_days": 365,
            "method": "quintiles",
            "new_days": 90,
            "silent_days": 100,
            "churned_days": 90,
            "reactivated_days": 30,
        },
    )
    assert response.status_code == 200
    assert "Churned must take longer than silent." in response.content.decode()


def test_every_admin_list_of_the_app_opens(admin_client, population):
    AccountManagerFactory()
    for name in ("customervalue", "valuetier", "scoringscheme", "accountmanager", "valuechange", "recomputerun"):
        assert admin_client.get(reverse(f"admin:crm_{name}_changelist")).status_code == 200, name


def test_the_history_counts_moves_from_one_tier_to_another_this_month(admin_client, population):
    from crm.models import ValueChange

    ValueChange.objects.create(profile=population, what="tier", from_value="core", to_value="ordinary")
    ValueChange.objects.create(
        profile=population,
        what="tier",
        from_value="core",
        to_value="ordinary",
        at=timezone.now() - timedelta(days=70),
    )
    start = timezone.localdate().replace(day=1)
    response = admin_client.get(
        reverse("admin:crm_valuechange_changelist"),
        {
            "what__exact": "tier",
            "from": "core",
            "to": "ordinary",
            # What the admin's "This month" link sends.
            "at__gte": f"{start.isoformat()} 00:00:00+00:00",
            "at__lt": f"{(start + timedelta(days=32)).replace(day=1).isoformat()} 00:00:00+00:00",
        },
    )
    assert response.status_code == 200
    assert response.context["cl"].result_count == 1


def test_profile_list_filters_by_tier_segment_and_lifecycle(client, django_user_model):
    from crm.models import CustomerValue, ValueTier
    from profiles.models import Profile

    admin_user = django_user_model.objects.create_superuser("value-filter-admin", "v@example.com", "pw")
    client.force_login(admin_user)
    core, _ = ValueTier.objects.get_or_create(slug="core-filter", defaults={"name": "Core filter", "rank": 9})
    vip = Profile.objects.create(user_id="vip-filter")
    plain = Profile.objects.create(user_id="plain-filter")
    CustomerValue.objects.create(profile=vip, tier=core, segment="important_value", lifecycle="active")
    CustomerValue.objects.create(profile=plain, segment="general_winback", lifecycle="churned")
    for query, shown, hidden in [
        (f"value__tier__id__exact={core.pk}", "vip-filter", "plain-filter"),
        ("value__segment=general_winback", "plain-filter", "vip-filter"),
        ("value__lifecycle=active", "vip-filter", "plain-filter"),
    ]:
        body = client.get(f"/admin/profiles/profile/?{query}").content.decode()
        assert shown in body and hidden not in body, query
