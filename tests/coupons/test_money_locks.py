"""Long transactions do not block money paths: expiry commits batch by batch, a large code batch
writes its codes without holding its rule's row, and a claim or redemption that finds its row
locked answers 503 BUSY (with Retry-After) after a short wait instead of hanging."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest
from django.db import connection, connections
from django.utils import timezone

from coupons import services
from coupons.models import CodeBatch, Coupon, CouponStatus
from profiles.services import identify
from tests.factories.coupons import CouponRuleFactory

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def other_session():
    """A second database session, as another process would hold one."""
    s = connection.settings_dict
    with psycopg.connect(
        host=s["HOST"], port=s["PORT"], user=s["USER"], password=s["PASSWORD"] or None, dbname=s["NAME"]
    ) as conn:
        yield conn


def test_expiry_commits_each_batch_before_the_next(monkeypatch):
    rule = CouponRuleFactory(per_user_limit=10)
    identify(user_id="u1")
    for _ in range(5):
        services.claim_coupon(rule_id=rule.pk, user_id="u1")
    Coupon.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    seen_by_others = []
    original = services._expire_batch

    def spy(*args, **kwargs):
        with other_session() as conn:
            seen_by_others.append(
                conn.execute("SELECT count(*) FROM coupons_coupon WHERE status = 'expired'").fetchone()[0]
            )
        return original(*args, **kwargs)

    monkeypatch.setattr(services, "_expire_batch", spy)
    assert services.expire_due_coupons(batch_size=2) == 5
    # Before each batch, the batches before it are committed: visible to another session.
    assert seen_by_others == [0, 2, 4]


def test_a_claim_goes_through_while_a_code_batch_writes_its_codes(monkeypatch, settings):
    settings.OPSLOOP_MONEY_LOCK_TIMEOUT_MS = 500
    rule = CouponRuleFactory(per_user_limit=1, budget=Decimal("100000"))
    identify(user_id="buyer")
    batch = CodeBatch.objects.create(rule=rule, quantity=50)
    claimed: list = []
    original = services._copy_codes

    def claim_meanwhile(cursor, count, chunk=100_000):
        def claim():
            try:
                claimed.append(services.claim_coupon(rule_id=rule.pk, user_id="buyer"))
            except Exception as exc:
                claimed.append(exc)
            finally:
                connections.close_all()

        worker = threading.Thread(target=claim)
        worker.start()
        worker.join(10)
        return original(cursor, count, chunk)

    monkeypatch.setattr(services, "_copy_codes", claim_meanwhile)
    done = services.generate_batch_codes(batch=batch)
    assert done.status == CodeBatch.Status.DONE and done.generated == 50
    assert len(claimed) == 1 and isinstance(claimed[0], Coupon), claimed
    rule.refresh_from_db()
    assert rule.issued_count == 51 and rule.committed == Decimal("20.00") * 51


def test_a_failed_batch_gives_its_reservation_back(monkeypatch):
    rule = CouponRuleFactory(budget=Decimal("1000"))
    batch = CodeBatch.objects.create(rule=rule, quantity=10)

    def broken(cursor, count, chunk=100_000):
        raise RuntimeError("disk full")

    monkeypatch.setattr(services, "_copy_codes", broken)
    with pytest.raises(RuntimeError):
        services.generate_batch_codes(batch=batch)
    batch.refresh_from_db()
    rule.refresh_from_db()
    assert batch.status == CodeBatch.Status.FAILED and "disk full" in batch.error
    assert (rule.issued_count, rule.committed) == (0, Decimal("0"))
    assert not Coupon.objects.filter(batch=batch).exists()


def test_a_claim_on_a_locked_rule_answers_503(make_api_client, settings):
    settings.OPSLOOP_MONEY_LOCK_TIMEOUT_MS = 300
    rule = CouponRuleFactory()
    identify(user_id="buyer")
    client = make_api_client("coupons:redeem")
    with other_session() as conn:
        conn.execute("SELECT id FROM coupons_couponrule WHERE id = %s FOR UPDATE", [rule.pk])
        started = time.monotonic()
        response = client.post(f"/api/v1/coupon-rules/{rule.pk}/claim", {"user_id": "buyer"}, format="json")
        waited = time.monotonic() - started
        conn.rollback()
    assert response.status_code == 503, response.content
    assert response.json()["reason"] == "BUSY"
    assert response["Retry-After"] == "1"
    assert waited < 5
    # Once the lock is gone, the same claim goes through.
    assert client.post(f"/api/v1/coupon-rules/{rule.pk}/claim", {"user_id": "buyer"}, format="json").status_code == 201


def test_a_redemption_of_a_locked_coupon_answers_503(make_api_client, settings):
    settings.OPSLOOP_MONEY_LOCK_TIMEOUT_MS = 300
    rule = CouponRuleFactory()
    identify(user_id="buyer")
    coupon = services.claim_coupon(rule_id=rule.pk, user_id="buyer")
    client = make_api_client("coupons:redeem")
    body = {"code": coupon.code, "user_id": "buyer", "order_id": "o-1", "order_amount": "100.00"}
    with other_session() as conn:
        conn.execute("SELECT id FROM coupons_coupon WHERE id = %s FOR UPDATE", [coupon.pk])
        response = client.post("/api/v1/coupons/redeem", body, format="json")
        conn.rollback()
    assert response.status_code == 503, response.content
    assert response.json()["reason"] == "BUSY"
    assert Coupon.objects.get(pk=coupon.pk).status == CouponStatus.AVAILABLE
    assert client.post("/api/v1/coupons/redeem", body, format="json").status_code in (200, 201)
