"""Partner bearer codes are money whoever reads them can spend: only roles with the export
permission (Operations) see them whole or export them; Analyst and Customer service see them
masked in the coupon list and page, and cannot download a batch."""

from __future__ import annotations

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
