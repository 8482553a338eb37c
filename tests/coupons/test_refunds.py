"""`order_refunded` events sent to the tracking API give a coupon order's money back. Ingestion only
records a refund (pending) and queues its application once the batch commits; a background step
applies it once, in a transaction of its own, and one that fails shows its reason (admin, API,
health page, log) until the beat's sweep or an operator applies it again.

Failures are made by the real database: a rule whose counters no longer hold the discounts its
redemptions gave (a hand edit, a bad import) cannot give one back, because `spent` would go below
zero (CHECK `couponrule_counters_gte_0`); setting the counter right again mends it."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import OperationalError, connection, transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from access.models import AuditEntry
from coupons import selectors, services, tasks
from coupons.models import Coupon, CouponRule, CouponStatus, OrderRefund, Redemption
from monitoring.selectors import health_report
from profiles.selectors import profile_for_user_id
from tests.factories.coupons import CouponRuleFactory, OrderRefundFactory, person
from tests.migrating import migrate_to, migrate_to_latest
from tracking.hooks import StoredEvent
from tracking.services import ingest_events

D = Decimal
PENDING, APPLIED, FAILED = OrderRefund.Status.PENDING, OrderRefund.Status.APPLIED, OrderRefund.Status.FAILED
CHANGELIST = "admin:coupons_orderrefund_changelist"


def refund_event(order_id: str, amount: str | None = None, event_id: str | None = None) -> dict:
    properties = {"order_id": order_id} if amount is None else {"order_id": order_id, "amount": amount}
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "name": "order_refunded",
        "kind": "business",
        "timestamp": timezone.now().isoformat(),
        "user_id": "refunder",
        "properties": properties,
    }


class Shop:
    """The product's server posting events. What a batch's commit queues is published then: with
    the `shop` fixture it runs at once, as a worker would; with `shop_without_broker` it is lost."""

    def __init__(self, client, commits) -> None:
        self.client, self.commits = client, commits

    def post(self, events: list[dict]) -> dict:
        with self.commits(execute=True):
            response = self.client.post("/api/v1/events", {"events": events}, format="json")
        assert response.status_code == 200, response.content
        return response.json()

    def refund(self, order_id: str, amount: str | None = None, event_id: str | None = None) -> str:
        event = refund_event(order_id, amount, event_id)
        body = self.post([event])
        assert body["accepted"] + body["duplicates"] == 1, body
        return event["event_id"]


@pytest.fixture
def tasks_inline():
    """Tasks queued through `publish` run in this process as they are queued (Celery's eager mode)."""
    from config.celery import app

    before = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = before


@pytest.fixture
def shop(make_api_client, django_capture_on_commit_callbacks, tasks_inline) -> Shop:
    return Shop(make_api_client("events:write"), django_capture_on_commit_callbacks)


@pytest.fixture
def shop_without_broker(make_api_client, django_capture_on_commit_callbacks, broker_down) -> Shop:
    return Shop(make_api_client("events:write"), django_capture_on_commit_callbacks)


@pytest.fixture
def operator(client, make_staff):
    client.force_login(make_staff("Operations"))
    return client


def redeemed(order_id: str = "o-1", *, rule: CouponRule | None = None) -> tuple[CouponRule, Coupon]:
    """A 150.00 order of "refunder" with a coupon of 20.00 off (the customer paid 130.00)."""
    profile_for_user_id("refunder") or person("refunder")
    rule = rule or CouponRuleFactory(value=D("20.00"), budget=D("100.00"), valid_days=30)
    coupon = services.claim_coupon(rule_id=rule.pk, user_id="refunder")
    services.redeem_coupon(code=coupon.code, user_id="refunder", order_id=order_id, order_amount=D("150.00"))
    return rule, coupon


def break_ledger(rule: CouponRule) -> None:
    """The rule's `spent` no longer holds the discounts of its standing redemptions."""
    CouponRule.objects.filter(pk=rule.pk).update(spent=D("0.00"))


def mend_ledger(rule: CouponRule, spent: str = "20.00") -> None:
    CouponRule.objects.filter(pk=rule.pk).update(spent=D(spent))


def failed_refund(shop: Shop, order_id: str = "o-bad") -> tuple[CouponRule, OrderRefund]:
    rule, _ = redeemed(order_id)
    break_ledger(rule)
    shop.refund(order_id)
    refund = OrderRefund.objects.get(order_id=order_id)
    assert refund.status == FAILED, refund.error
    return rule, refund


# --- what a refund does (applied by the task its ingestion queued) -----------------------------


@pytest.mark.django_db
def test_a_full_refund_returns_the_discount_to_the_budget_and_the_coupon_to_its_holder(shop):
    rule, coupon = redeemed()
    event_id = shop.refund("o-1")
    rule.refresh_from_db()
    coupon.refresh_from_db()
    assert (rule.spent, rule.committed, rule.redeemed_count) == (D("0.00"), D("20.00"), 0)
    assert coupon.status == CouponStatus.AVAILABLE
    assert Redemption.objects.get(order_id="o-1").rolled_back_at is not None
    refund = OrderRefund.objects.get(event_id=event_id)
    assert (refund.status, refund.outcome, refund.attempts, refund.error) == (
        APPLIED,
        OrderRefund.Outcome.ROLLED_BACK,
        1,
        "",
    )
    assert refund.applied_at is not None and refund.failed_at is None


@pytest.mark.django_db
def test_the_same_refund_event_twice_is_applied_once(shop):
    redeemed()
    event_id = shop.refund("o-1", amount="50.00")
    shop.refund("o-1", amount="50.00", event_id=event_id)  # a duplicate delivery
    refund = OrderRefund.objects.get(event_id=event_id)
    assert services.apply_refund(refund_id=refund.pk) is None  # applied again by hand: nothing to do
    assert tasks.apply_refunds([refund.pk]) == {"applied": 0, "failed": 0, "skipped": 0}  # a redelivered task
    assert Redemption.objects.get(order_id="o-1").refunded_amount == D("50.00")
    refund.refresh_from_db()
    assert refund.attempts == 1


@pytest.mark.django_db
def test_a_partial_refund_lowers_the_counted_revenue_and_keeps_the_discount(shop):
    rule, _ = redeemed()
    shop.refund("o-1", amount="50.00")
    rule.refresh_from_db()
    assert rule.spent == D("20.00") and rule.redeemed_count == 1
    assert selectors.rule_report(rule=rule).order_revenue == D("100.00")
    shop.refund("o-1", amount="100.00")  # the rest: now the whole order is refunded
    rule.refresh_from_db()
    assert rule.spent == D("0.00")
    assert Redemption.objects.get(order_id="o-1").rolled_back_at is not None


@pytest.mark.django_db
def test_a_refund_of_an_order_without_coupons_changes_nothing(shop):
    rule, _ = redeemed()
    shop.refund("another-order")
    rule.refresh_from_db()
    assert rule.spent == D("20.00")
    assert not OrderRefund.objects.exists()


@pytest.mark.django_db
def test_a_refund_after_the_coupon_expired_returns_the_money_but_not_the_coupon(shop):
    rule, coupon = redeemed()
    Coupon.objects.filter(pk=coupon.pk).update(expires_at=timezone.now() - timezone.timedelta(minutes=1))
    shop.refund("o-1")
    rule.refresh_from_db()
    coupon.refresh_from_db()
    assert (rule.spent, rule.committed) == (D("0.00"), D("0.00"))
    assert coupon.status == CouponStatus.EXPIRED


@pytest.mark.django_db
def test_refunding_what_the_customer_paid_is_a_full_refund(shop):
    rule, _ = redeemed()  # a 150.00 order with 20.00 off: the customer paid 130.00
    shop.refund("o-1", amount="100.00")
    assert Redemption.objects.get(order_id="o-1").rolled_back_at is None
    event_id = shop.refund("o-1", amount="30.00")
    rule.refresh_from_db()
    assert OrderRefund.objects.get(event_id=event_id).outcome == OrderRefund.Outcome.ROLLED_BACK
    assert Redemption.objects.get(order_id="o-1").rolled_back_at is not None
    assert (rule.spent, rule.redeemed_count) == (D("0.00"), 0)


@pytest.mark.django_db
def test_a_refund_amount_larger_than_money_columns_is_capped_at_the_order_and_never_fails_the_batch(shop):
    rule, _ = redeemed()
    event_id = shop.refund("o-1", amount="999999999999999")  # 15 digits: valid for tracking
    stored = OrderRefund.objects.get(event_id=event_id)
    assert (stored.amount, stored.outcome) == (D("150.00"), OrderRefund.Outcome.ROLLED_BACK)
    rule.refresh_from_db()
    assert rule.spent == D("0.00")


@pytest.mark.django_db
def test_the_refunds_of_one_batch_are_applied_each_on_its_own(shop):
    person("refunder")
    rule = CouponRuleFactory(value=D("5.00"), budget=D("100.00"), valid_days=30, per_user_limit=5)
    for order_id in ("o-b", "o-a"):
        coupon = services.claim_coupon(rule_id=rule.pk, user_id="refunder")
        services.redeem_coupon(code=coupon.code, user_id="refunder", order_id=order_id, order_amount=D("50.00"))
    events = [
        refund_event(order_id, amount)
        for order_id, amount in (("o-b", "10.00"), ("o-a", "999999999999999"), ("o-b", "5.00"))
    ]
    assert shop.post(events)["accepted"] == 3
    assert Redemption.objects.get(order_id="o-a").rolled_back_at is not None
    assert Redemption.objects.get(order_id="o-b").refunded_amount == D("15.00")
    # Recorded in the batch's order, which is the order the refunds of one order are applied in.
    stored = list(OrderRefund.objects.order_by("id").values_list("event_id", "status", "outcome"))
    assert stored == [
        (events[0]["event_id"], APPLIED, OrderRefund.Outcome.PARTIAL),
        (events[1]["event_id"], APPLIED, OrderRefund.Outcome.ROLLED_BACK),
        (events[2]["event_id"], APPLIED, OrderRefund.Outcome.PARTIAL),
    ]


@pytest.mark.django_db
def test_a_refund_whose_amount_cannot_be_read_is_recorded_as_a_refund_of_the_whole_order():
    redeemed()
    event = StoredEvent(1, "odd-amount", "order_refunded", "business", timezone.now(), "refunder", None, {})
    services.on_events_ingested(
        [
            event._replace(properties={"order_id": "o-1", "amount": "n/a"}),
            event._replace(event_id="no-coupons", properties={"order_id": "elsewhere", "amount": "5.00"}),
        ]
    )
    assert list(OrderRefund.objects.values_list("event_id", "amount", "status")) == [("odd-amount", None, PENDING)]


# --- ingestion only records: the money moves later, outside its transaction ----------------------


def lockable_elsewhere(*rows: tuple[str, int]) -> str:
    """Take each (table, id) row FOR UPDATE NOWAIT in a session of another thread: "" when all
    were free, else the database's refusal."""
    outcome = {"error": "did not run"}

    def take() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                for table, pk in rows:
                    cursor.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR UPDATE NOWAIT", [pk])
            outcome["error"] = ""
        except OperationalError as exc:
            outcome["error"] = str(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(30)
    return outcome["error"]


@pytest.mark.django_db(transaction=True)
def test_ingesting_a_refund_locks_no_rule_or_redemption_and_the_refund_waits_pending_for_its_task(broker_down):
    rule, coupon = redeemed()
    redemption = Redemption.objects.get(order_id="o-1")
    with transaction.atomic():
        assert ingest_events(events=[refund_event("o-1")]).accepted == 1
        # Still inside the ingestion's transaction: the money rows are free for anyone else.
        assert (
            lockable_elsewhere(
                ("coupons_couponrule", rule.pk), ("coupons_redemption", redemption.pk), ("coupons_coupon", coupon.pk)
            )
            == ""
        )
    # Committed; the task it queued was lost with the broker: recorded, nothing applied.
    refund = OrderRefund.objects.get(order_id="o-1")
    assert (refund.status, refund.outcome, refund.applied_at, refund.attempts) == (PENDING, None, None, 0)
    rule.refresh_from_db()
    assert (rule.spent, rule.committed, rule.redeemed_count) == (D("20.00"), D("0.00"), 1)
    assert tasks.apply_refunds([refund.pk]) == {"applied": 1, "failed": 0, "skipped": 0}
    rule.refresh_from_db()
    assert (rule.spent, rule.committed, rule.redeemed_count) == (D("0.00"), D("20.00"), 0)
    refund.refresh_from_db()
    assert (refund.status, refund.outcome) == (APPLIED, OrderRefund.Outcome.ROLLED_BACK)


@pytest.mark.worker
def test_on_a_real_worker_the_task_queued_by_the_ingestion_applies_the_refund(celery_worker, make_api_client):
    rule, _ = redeemed()
    tracker = make_api_client("events:write")
    response = tracker.post("/api/v1/events", {"events": [refund_event("o-1", amount="150.00")]}, format="json")
    assert response.status_code == 200 and response.json()["accepted"] == 1
    deadline = time.monotonic() + 60
    while not OrderRefund.objects.filter(order_id="o-1", status=APPLIED).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    refund = OrderRefund.objects.get(order_id="o-1")
    assert (refund.status, refund.outcome, refund.amount) == (APPLIED, OrderRefund.Outcome.ROLLED_BACK, D("150.00"))
    rule.refresh_from_db()
    assert (rule.spent, rule.redeemed_count) == (D("0.00"), 0)


# --- a refund that fails shows, and heals ------------------------------------------------------


@pytest.mark.django_db
def test_a_refund_that_fails_is_failed_with_its_reason_and_logged_and_the_rest_of_its_batch_is_applied(shop, caplog):
    bad, _ = redeemed("o-bad")
    good, _ = redeemed("o-good")
    break_ledger(bad)
    with caplog.at_level(logging.ERROR, logger="coupons.services"):
        shop.post([refund_event("o-bad"), refund_event("o-good", amount="40.00"), refund_event("o-good")])
    failed = OrderRefund.objects.get(order_id="o-bad")
    assert (failed.status, failed.outcome, failed.attempts) == (FAILED, None, 1)
    assert failed.error.startswith("IntegrityError: ") and "couponrule_counters_gte_0" in failed.error
    assert failed.failed_at is not None and failed.applied_at is None
    # Nothing of the failed refund stayed; the order's redemption still stands.
    assert Redemption.objects.get(order_id="o-bad").rolled_back_at is None
    bad.refresh_from_db()
    assert (bad.spent, bad.redeemed_count) == (D("0.00"), 1)
    # The other refunds of the batch were applied, in their order.
    applied = list(OrderRefund.objects.filter(order_id="o-good").order_by("id").values_list("status", "outcome"))
    assert applied == [(APPLIED, OrderRefund.Outcome.PARTIAL), (APPLIED, OrderRefund.Outcome.ROLLED_BACK)]
    good.refresh_from_db()
    assert (good.spent, good.redeemed_count) == (D("0.00"), 0)
    logged = [r for r in caplog.records if f"coupons: refund {failed.pk} failed" in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "IntegrityError" in logged[0].getMessage()


@pytest.mark.django_db
def test_a_failed_refund_shows_its_reason_in_the_admin_and_an_operator_applies_it_once_mended(shop, operator):
    rule, refund = failed_refund(shop)
    page = operator.get(reverse(CHANGELIST), {"status__exact": "failed"})
    assert page.status_code == 200
    assert "IntegrityError: new row for relation" in page.content.decode() and "o-bad" in page.content.decode()
    detail = operator.get(reverse("admin:coupons_orderrefund_change", args=[refund.pk]))
    assert "couponrule_counters_gte_0" in detail.content.decode()

    # Before the cause is mended the action tries, and says it still fails.
    action = {"action": "apply_again", "_selected_action": [refund.pk]}
    response = operator.post(reverse(CHANGELIST), action, follow=True)
    assert "0 refund(s) applied." in response.content.decode()
    assert "1 refund(s) still failing" in response.content.decode()
    refund.refresh_from_db()
    assert (refund.status, refund.attempts) == (FAILED, 2)

    mend_ledger(rule)
    done = OrderRefundFactory(order_id="o-bad", status=APPLIED, outcome="partial", applied_at=timezone.now())
    response = operator.post(
        reverse(CHANGELIST), {"action": "apply_again", "_selected_action": [refund.pk, done.pk]}, follow=True
    )
    assert "1 refund(s) applied." in response.content.decode()
    assert "1 applied already: left alone." in response.content.decode()
    refund.refresh_from_db()
    assert (refund.status, refund.outcome, refund.error, refund.failed_at, refund.attempts) == (
        APPLIED,
        OrderRefund.Outcome.ROLLED_BACK,
        "",
        None,
        3,
    )
    rule.refresh_from_db()
    assert (rule.spent, rule.committed, rule.redeemed_count) == (D("0.00"), D("20.00"), 0)
    entries = AuditEntry.objects.filter(action="coupons.refund_retried", object_id=str(refund.pk)).order_by("id")
    assert [(e.details["status"], e.actor_id is not None) for e in entries] == [(FAILED, True), (APPLIED, True)]
    assert entries[1].details["previous_error"].startswith("IntegrityError")


@pytest.mark.django_db
def test_the_api_lists_a_failed_refund_with_its_reason_and_its_retry_applies_it_once_mended(shop, make_api_client):
    rule, refund = failed_refund(shop)
    redeemed("o-fine")
    shop.refund("o-fine")
    ops = make_api_client("manage")
    listed = ops.get("/api/v1/coupon-refunds", {"status": "failed"})
    assert listed.status_code == 200
    assert [(r["id"], r["order_id"], r["status"]) for r in listed.json()["results"]] == [(refund.pk, "o-bad", FAILED)]
    assert listed.json()["results"][0]["error"].startswith("IntegrityError")
    by_order = ops.get("/api/v1/coupon-refunds", {"order_id": "o-fine"}).json()["results"]
    assert [(r["status"], r["outcome"], r["error"]) for r in by_order] == [(APPLIED, "rolled_back", "")]
    assert ops.get("/api/v1/coupon-refunds", {"status": "lost"}).status_code == 400

    still_broken = ops.post(f"/api/v1/coupon-refunds/{refund.pk}/retry")
    assert still_broken.status_code == 200
    assert (still_broken.json()["status"], still_broken.json()["attempts"]) == (FAILED, 2)
    mend_ledger(rule)
    retried = ops.post(f"/api/v1/coupon-refunds/{refund.pk}/retry")
    assert retried.status_code == 200, retried.content
    assert (retried.json()["status"], retried.json()["outcome"], retried.json()["error"]) == (
        APPLIED,
        "rolled_back",
        "",
    )
    assert ops.get(f"/api/v1/coupon-refunds/{refund.pk}").json()["status"] == APPLIED
    again = ops.post(f"/api/v1/coupon-refunds/{refund.pk}/retry")
    assert again.status_code == 409 and again.json()["reason"] == "ALREADY_APPLIED"
    assert ops.post("/api/v1/coupon-refunds/999999/retry").json()["reason"] == "REFUND_NOT_FOUND"
    assert ops.post("/api/v1/coupon-refunds/nope/retry").status_code == 404
    assert ops.get("/api/v1/coupon-refunds/999999").status_code == 404
    rule.refresh_from_db()
    assert (rule.spent, rule.redeemed_count) == (D("0.00"), 0)  # given back once
    entries = AuditEntry.objects.filter(action="coupons.refund_retried", object_id=str(refund.pk))
    assert entries.count() == 2 and {e.api_key_id for e in entries} == {ops.api_key.pk}


@pytest.mark.django_db
def test_the_sweep_applies_a_refund_whose_task_was_lost(shop_without_broker):
    rule, _ = redeemed()
    shop_without_broker.refund("o-1")
    refund = OrderRefund.objects.get(order_id="o-1")
    assert refund.status == PENDING
    # Within its first minute the task may still come: the sweep leaves it be.
    assert services.apply_due_refunds(now=refund.created_at + timedelta(seconds=30)).as_dict() == {
        "applied": 0,
        "failed": 0,
        "skipped": 0,
    }
    swept = services.apply_due_refunds(now=refund.created_at + timedelta(minutes=1))
    assert swept.as_dict() == {"applied": 1, "failed": 0, "skipped": 0}
    rule.refresh_from_db()
    assert (rule.spent, rule.redeemed_count) == (D("0.00"), 0)


@pytest.mark.django_db
def test_the_sweep_retries_a_failed_refund_with_back_off_so_a_mended_cause_heals_by_itself(shop):
    rule, refund = failed_refund(shop)
    first_failure = refund.failed_at
    assert services.apply_due_refunds(now=first_failure + timedelta(seconds=59)).failed == 0
    # A minute after the first failure it is tried again, and fails again while not mended.
    assert services.apply_due_refunds(now=first_failure + timedelta(minutes=1)).failed == 1
    refund.refresh_from_db()
    assert refund.attempts == 2
    second_failure = refund.failed_at
    mend_ledger(rule)
    # The second wait is two minutes.
    assert services.apply_due_refunds(now=second_failure + timedelta(seconds=119)).applied == 0
    assert services.apply_due_refunds(now=second_failure + timedelta(minutes=2)).applied == 1
    refund.refresh_from_db()
    assert (refund.status, refund.attempts) == (APPLIED, 3)
    rule.refresh_from_db()
    assert (rule.spent, rule.redeemed_count) == (D("0.00"), 0)


@pytest.mark.django_db
def test_a_failing_refund_is_tried_at_most_an_hour_apart():
    failed_at = timezone.now() - timedelta(days=1)
    refund = OrderRefundFactory(status=FAILED, attempts=8, failed_at=failed_at, error="IntegrityError: x")
    assert selectors.refunds_due(now=failed_at + timedelta(minutes=59)) == []
    assert selectors.refunds_due(now=failed_at + timedelta(minutes=60)) == [refund.pk]


@pytest.mark.django_db
def test_the_sweep_gives_up_after_ten_attempts_and_leaves_the_refund_failed_for_a_person():
    long_ago = timezone.now() - timedelta(days=1)
    ninth = OrderRefundFactory(status=FAILED, attempts=9, failed_at=long_ago, error="IntegrityError: x")
    tenth = OrderRefundFactory(status=FAILED, attempts=10, failed_at=long_ago, error="IntegrityError: x")
    assert selectors.refunds_due(now=timezone.now()) == [ninth.pk]
    now = timezone.now()
    assert selectors.refund_due(refund_id=ninth.pk, now=now) and not selectors.refund_due(refund_id=tenth.pk, now=now)
    # It still shows, and a person may still retry it.
    assert [r.pk for r in selectors.order_refunds(status=FAILED)] == [tenth.pk, ninth.pk]


@pytest.mark.django_db
def test_a_sweep_that_listed_a_refund_before_another_retried_it_leaves_it_to_its_back_off(shop):
    rule, refund = failed_refund(shop)
    mend_ledger(rule)
    # Listed by a sweep a minute after the failure, but another sweep retried it (and it failed
    # again) before this one reached it: under its lock it is not due, so it waits.
    services.apply_due_refunds(now=refund.failed_at + timedelta(minutes=1))
    refund.refresh_from_db()
    assert (refund.status, refund.attempts) == (APPLIED, 2)
    late = OrderRefundFactory(status=FAILED, attempts=2, failed_at=timezone.now(), error="x")
    outcome = services.apply_refunds(refund_ids=[late.pk], due_at=late.failed_at + timedelta(seconds=90))
    assert outcome.as_dict() == {"applied": 0, "failed": 0, "skipped": 1}
    late.refresh_from_db()
    assert (late.status, late.attempts) == (FAILED, 2)


@pytest.mark.django_db
def test_beat_runs_the_refund_sweep_every_minute_from_an_editable_schedule(shop_without_broker):
    beat = PeriodicTask.objects.get(task="coupons.tasks.apply_pending_refunds")
    assert beat.enabled and beat.crontab is not None and beat.crontab.minute == "*"
    rule, _ = redeemed()
    shop_without_broker.refund("o-1")
    OrderRefund.objects.update(created_at=F("created_at") - timedelta(minutes=2))  # its task was lost 2 min ago
    assert tasks.apply_pending_refunds() == {"applied": 1, "failed": 0, "skipped": 0}
    assert tasks.apply_pending_refunds() == {"applied": 0, "failed": 0, "skipped": 0}
    rule.refresh_from_db()
    assert rule.spent == D("0.00")


@pytest.mark.django_db
def test_the_health_report_lists_failed_refunds_and_refunds_pending_for_too_long():
    now = timezone.now()
    failed = OrderRefundFactory(status=FAILED, attempts=3, failed_at=now, error="IntegrityError: ledger")
    lost = OrderRefundFactory(created_at=now - timedelta(minutes=11))
    OrderRefundFactory(created_at=now - timedelta(minutes=2))  # the sweep's business, not a problem yet
    report = health_report(now=now)
    sections = {s.title: s for s in report.sections}
    assert [(i.id, i.reason) for i in sections["failed order refund(s)"].items] == [
        (failed.pk, "IntegrityError: ledger")
    ]
    assert [i.id for i in sections["order refund(s) pending for too long"].items] == [lost.pk]
    assert "1 failed order refund(s)" in report.problems


@pytest.mark.django_db(transaction=True)
def test_refunds_applied_before_the_upgrade_read_as_applied_and_a_downgrade_never_drops_money_owed():
    applied_at = timezone.now() - timedelta(days=3)
    try:
        before = migrate_to(("coupons", "0013_claim_follows_merges"))
        before.get_model("coupons", "OrderRefund").objects.create(
            event_id="before", order_id="o-old", amount=D("5.00"), outcome="partial", applied_at=applied_at
        )
        after = migrate_to(("coupons", "0014_refund_status"))
        refunds = after.get_model("coupons", "OrderRefund").objects
        old = refunds.get(event_id="before")
        assert (old.status, old.outcome, old.attempts, old.error) == (APPLIED, "partial", 1, "")
        assert (old.created_at, old.applied_at, old.failed_at) == (applied_at, applied_at, None)
        # A process of the former version, still running during a rolling upgrade, writes a refund
        # it applied with the former columns only: the row reads as applied.
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO coupons_orderrefund (event_id, order_id, amount, outcome, applied_at) "
                "VALUES ('during', 'o-mid', NULL, 'rolled_back', now())"
            )
        during = refunds.get(event_id="during")
        assert (during.status, during.attempts, during.error) == (APPLIED, 0, "")
        refunds.create(event_id="after", order_id="o-new", status=PENDING)
        with pytest.raises(Exception, match="1 order refund\\(s\\) are pending or failed"):
            migrate_to(("coupons", "0013_claim_follows_merges"))
        assert refunds.filter(event_id="after", status=PENDING).exists()
        refunds.filter(event_id="after").delete()
        migrate_to(("coupons", "0013_claim_follows_merges"))
        remaining = before.get_model("coupons", "OrderRefund").objects.order_by("event_id")
        assert list(remaining.values_list("event_id", flat=True)) == ["before", "during"]
    finally:
        migrate_to_latest()
    assert OrderRefund.objects.get(event_id="before").status == APPLIED
    assert PeriodicTask.objects.filter(task="coupons.tasks.apply_pending_refunds", enabled=True).exists()


# --- concurrency ---------------------------------------------------------------------------------


def waiting_for_a_lock() -> bool:
    # pg_locks, unlike pg_stat_activity, is read afresh by every statement of a transaction.
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        return cursor.fetchone()[0] > 0


@pytest.mark.django_db(transaction=True)
def test_two_workers_applying_one_refund_at_once_apply_it_once():
    rule, _ = redeemed()
    refund = OrderRefundFactory(order_id="o-1", amount=D("50.00"))  # partial: applied twice it would count twice
    results: dict[str, object] = {}

    def worker(name: str) -> None:
        try:
            results[name] = services.apply_refund(refund_id=refund.pk)
        finally:
            connection.close()

    first, second = (threading.Thread(target=worker, args=(name,)) for name in ("first", "second"))
    with transaction.atomic():
        # The order's redemptions held here, so the first worker, having taken the refund, waits
        # inside its transaction while the second one comes.
        list(Redemption.objects.select_for_update().filter(order_id="o-1"))
        first.start()
        deadline = time.monotonic() + 30
        while not waiting_for_a_lock() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting_for_a_lock(), "the first worker never reached the order's rows"
        second.start()
        second.join(30)
        # The second one left at once, without waiting for the first.
        assert not second.is_alive() and results["second"] is None
    first.join(30)
    assert isinstance(results["first"], OrderRefund) and results["first"].status == APPLIED
    assert Redemption.objects.get(order_id="o-1").refunded_amount == D("50.00")
    refund.refresh_from_db()
    assert (refund.status, refund.attempts) == (APPLIED, 1)
    rule.refresh_from_db()
    assert (rule.spent, rule.redeemed_count) == (D("20.00"), 1)


@pytest.mark.django_db(transaction=True)
def test_a_retry_while_a_worker_applies_the_refund_answers_409_in_progress_and_changes_nothing(make_api_client):
    redeemed()
    refund = OrderRefundFactory(order_id="o-1", status=FAILED, attempts=1, failed_at=timezone.now(), error="x")
    ops = make_api_client("manage")
    with transaction.atomic():
        # A worker holds the refund's row, applying it.
        OrderRefund.objects.select_for_update().get(pk=refund.pk)
        outcome: dict[str, object] = {}

        def operator_retry() -> None:
            try:
                response = ops.post(f"/api/v1/coupon-refunds/{refund.pk}/retry")
                outcome["status"], outcome["body"] = response.status_code, response.json()
            finally:
                connection.close()

        thread = threading.Thread(target=operator_retry)
        thread.start()
        thread.join(30)
        assert not thread.is_alive()
    assert outcome["status"] == 409 and outcome["body"]["reason"] == "IN_PROGRESS", outcome
    refund.refresh_from_db()
    assert (refund.status, refund.attempts) == (FAILED, 1)
    assert not AuditEntry.objects.filter(action="coupons.refund_retried").exists()


# --- who may -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_refund_endpoints_need_the_manage_scope(make_api_client, staff_client):
    refund = OrderRefundFactory(status=FAILED, attempts=1, failed_at=timezone.now(), error="IntegrityError: x")
    for caller in (make_api_client("events:write", "coupons:redeem", "profiles:read"), staff_client("Analyst")):
        assert caller.get("/api/v1/coupon-refunds").status_code == 403
        assert caller.get(f"/api/v1/coupon-refunds/{refund.pk}").status_code == 403
        assert caller.post(f"/api/v1/coupon-refunds/{refund.pk}/retry").status_code == 403
    refund.refresh_from_db()
    assert refund.attempts == 1
    assert staff_client("Operations").get("/api/v1/coupon-refunds").status_code == 200


@pytest.mark.django_db
def test_only_staff_who_may_change_refunds_can_apply_them_again(client, make_staff):
    rule, _ = redeemed()
    refund = OrderRefundFactory(order_id="o-1", status=FAILED, attempts=1, failed_at=timezone.now(), error="x")
    client.force_login(make_staff("Analyst"))  # may view coupons, not change them
    page = client.get(reverse(CHANGELIST))
    assert page.status_code == 200
    form = page.context["action_form"]  # None: no action at all for this viewer
    assert form is None or "apply_again" not in dict(form.fields["action"].choices)
    client.post(reverse(CHANGELIST), {"action": "apply_again", "_selected_action": [refund.pk]})
    refund.refresh_from_db()
    assert (refund.status, refund.attempts) == (FAILED, 1)
    rule.refresh_from_db()
    assert rule.spent == D("20.00")
    assert not AuditEntry.objects.filter(action="coupons.refund_retried").exists()


@pytest.mark.django_db
def test_the_refund_list_reads_a_page_in_two_queries(make_api_client, django_assert_num_queries):
    for n in range(5):
        OrderRefundFactory(order_id=f"o-{n}")
    ops = make_api_client("manage")
    assert ops.get("/api/v1/coupon-refunds").status_code == 200  # the key is checked once, then remembered
    with django_assert_num_queries(2):  # the count and the page
        response = ops.get("/api/v1/coupon-refunds", {"status": "pending"})
    assert response.json()["count"] == 5
