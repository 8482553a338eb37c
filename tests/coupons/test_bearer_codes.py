"""Partner bearer codes are money whoever reads them can spend: only roles with the export
permission (Operations) see them whole or export them; Analyst and Customer service see them
masked in the coupon list and page, and cannot download a batch."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client

from coupons import services
from coupons.models import CodeBatch, Coupon
from tests.factories.coupons import CouponRuleFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def batch():
    rule = CouponRuleFactory()
    batch = CodeBatch.objects.create(rule=rule, quantity=3, partner="acme")
    return services.generate_batch_codes(batch=batch)


def _client(make_staff, role):
    client = Client()
    client.force_login(make_staff(role))
    return client


@pytest.mark.parametrize("role", ["Analyst", "Customer service"])
def test_other_roles_see_bearer_codes_masked_and_cannot_export(make_staff, batch, role):
    client = _client(make_staff, role)
    code = Coupon.objects.filter(batch=batch).first()
    listing = client.get("/admin/coupons/coupon/")
    assert listing.status_code == 200
    assert code.display_code not in listing.content.decode()
    page = client.get(f"/admin/coupons/coupon/{code.pk}/change/")
    assert page.status_code == 200
    assert code.display_code not in page.content.decode() and code.code not in page.content.decode()
    assert client.get(f"/admin/coupons/codebatch/{batch.pk}/export/").status_code == 403


def test_operations_sees_and_exports_them(make_staff, batch):
    client = _client(make_staff, "Operations")
    code = Coupon.objects.filter(batch=batch).first()
    assert code.display_code in client.get("/admin/coupons/coupon/").content.decode()
    export = client.get(f"/admin/coupons/codebatch/{batch.pk}/export/")
    assert export.status_code == 200
    assert (
        code.display_code in b"".join(export.streaming_content).decode()
        or code.code in b"".join(client.get(f"/admin/coupons/codebatch/{batch.pk}/export/").streaming_content).decode()
    )


def _redeemed_bearer_code(batch) -> Coupon:
    from tests.factories.coupons import person

    code = Coupon.objects.filter(batch=batch).first()
    person(user_id="shopper")
    services.redeem_coupon(code=code.code, user_id="shopper", order_id="order-b", order_amount=Decimal("300"))
    return code


def test_the_redemption_list_and_page_mask_bearer_codes_for_analysts(make_staff, batch):
    code = _redeemed_bearer_code(batch)
    client = _client(make_staff, "Analyst")
    listing = client.get("/admin/coupons/redemption/")
    assert listing.status_code == 200
    assert "order-b" in listing.content.decode()
    assert code.display_code not in listing.content.decode() and code.code not in listing.content.decode()
    redemption = code.redemptions.get()
    page = client.get(f"/admin/coupons/redemption/{redemption.pk}/change/")
    assert page.status_code == 200
    assert code.display_code not in page.content.decode() and code.code not in page.content.decode()


def test_the_redemption_list_shows_bearer_codes_to_operations(make_staff, batch):
    code = _redeemed_bearer_code(batch)
    assert code.display_code in _client(make_staff, "Operations").get("/admin/coupons/redemption/").content.decode()


def _staff_api(make_staff, *perms):
    from django.contrib.auth.models import Permission
    from rest_framework.test import APIClient

    user = make_staff()
    for name in perms:
        app_label, codename = name.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    client = APIClient()
    client.force_login(user)
    return client


def test_an_api_rollback_masks_the_bearer_code_it_makes_spendable_again(make_api_client, make_staff, batch):
    code = _redeemed_bearer_code(batch)
    answer = make_api_client("coupons:redeem").post("/api/v1/coupons/rollback", {"order_id": "order-b"}, format="json")
    assert answer.status_code == 200
    shown = answer.json()["redemptions"][0]["code"]
    assert shown != code.code and code.code not in answer.content.decode() and shown.endswith(code.code[-1])
    Coupon.objects.filter(pk=code.pk).update(status="available")  # spendable again, as the rollback left it

    services.redeem_coupon(code=code.code, user_id="shopper", order_id="order-c", order_amount=Decimal("300"))
    staff = _staff_api(make_staff, "access.scope_coupons_redeem")
    answer = staff.post("/api/v1/coupons/rollback", {"order_id": "order-c"}, format="json")
    assert answer.status_code == 200 and code.code not in answer.content.decode()

    services.redeem_coupon(code=code.code, user_id="shopper", order_id="order-d", order_amount=Decimal("300"))
    allowed = _staff_api(make_staff, "access.scope_coupons_redeem", "coupons.export_codebatch")
    answer = allowed.post("/api/v1/coupons/rollback", {"order_id": "order-d"}, format="json")
    assert answer.status_code == 200 and answer.json()["redemptions"][0]["code"] == code.code


def test_personal_codes_stay_whole_in_a_rollback(make_api_client):
    from tests.factories.coupons import CouponRuleFactory, person

    person(user_id="holder")
    coupon = services.claim_coupon(rule_id=CouponRuleFactory().pk, user_id="holder")
    services.redeem_coupon(code=coupon.code, user_id="holder", order_id="order-p", order_amount=Decimal("300"))
    answer = make_api_client("coupons:redeem").post("/api/v1/coupons/rollback", {"order_id": "order-p"}, format="json")
    assert answer.json()["redemptions"][0]["code"] == coupon.code


def test_a_masked_code_cannot_be_read_back_by_prefix_search_or_sorting(make_staff, batch):
    code = _redeemed_bearer_code(batch)
    other = Coupon.objects.filter(batch=batch).exclude(pk=code.pk).first()
    services.redeem_coupon(code=other.code, user_id="shopper", order_id="order-c", order_amount=Decimal("300"))
    analyst = _client(make_staff, "Analyst")
    for prefix in (code.code[:4], code.code[:8], code.code[:-1]):
        found = analyst.get("/admin/coupons/redemption/", {"q": prefix})
        assert found.status_code == 200
        assert "order-b" not in found.content.decode(), prefix
    assert "order-b" in analyst.get("/admin/coupons/redemption/", {"q": code.code}).content.decode()
    # `o=<code column>` sorts by the code for Operations, and is ignored for a masked viewer.
    masked = analyst.get("/admin/coupons/redemption/").context["cl"]
    column = next(i for i, f in enumerate(masked.list_display) if f in ("code", "masked_code"))
    masked = analyst.get("/admin/coupons/redemption/", {"o": str(column)}).context["cl"]
    assert not any("coupon__code" in str(o) for o in masked.queryset.query.order_by)
    operations = _client(make_staff, "Operations")
    column = operations.get("/admin/coupons/redemption/").context["cl"].list_display.index("code")
    whole = operations.get("/admin/coupons/redemption/", {"o": str(column)}).context["cl"]
    assert any("coupon__code" in str(o) for o in whole.queryset.query.order_by)
