"""Many clients at once on the real PostgreSQL: each thread has its own connection and commits,
so the limits are enforced by the database (row locks, conditional UPDATEs, unique indexes)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection, transaction

from coupons import errors, selectors, services
from coupons.models import Coupon, CouponRule, Redemption, RuleHolding
from tests.factories.coupons import CouponRuleFactory, PercentRuleFactory, person

pytestmark = pytest.mark.django_db(transaction=True)
D = Decimal
CLIENTS = 60


def run_at_once(calls: list[Callable[[], object]]) -> list[object]:
    """Run every call in its own thread, released together; each returns a value or its error."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        try:
            return call()
        except errors.CouponError as refusal:
            return refusal
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def assert_books_balance(rule: CouponRule) -> None:
    rule.refresh_from_db()
    ledger = selectors.ledger_from_rows(rule=rule)
    assert (ledger.issued, ledger.redeemed, ledger.committed, ledger.spent) == (
        rule.issued_count,
        rule.redeemed_count,
        rule.committed,
        rule.spent,
    )
    assert rule.budget is None or rule.committed + rule.spent <= rule.budget


def test_sixty_clients_claim_and_exactly_the_budgets_k_coupons_are_issued():
    k = 17
    rule = CouponRuleFactory(value=D("25.00"), budget=D("25.00") * k + D("24.99"))
    users = [f"c-{i}" for i in range(CLIENTS)]
    results = run_at_once([lambda u=u: services.claim_coupon(rule_id=rule.pk, user_id=u, request_id=u) for u in users])
    issued = [r for r in results if isinstance(r, Coupon)]
    refused = Counter(r.reason for r in results if isinstance(r, errors.CouponError))
    assert len(issued) == k
    assert refused == {"BUDGET_EXHAUSTED": CLIENTS - k}
    assert Coupon.objects.filter(rule=rule).count() == k
    assert_books_balance(rule)


def test_parallel_claims_and_redemptions_never_overspend_and_never_reuse_a_code():
    k = 12
    rule = PercentRuleFactory(value=D("50"), max_discount=D("40.00"), budget=D("40.00") * k)
    users = [f"r-{i}" for i in range(CLIENTS)]
    claimed = run_at_once([lambda u=u: services.claim_coupon(rule_id=rule.pk, user_id=u) for u in users])
    coupons = [c for c in claimed if isinstance(c, Coupon)]
    assert len(coupons) == k

    # Two orders race for every code (and the holder's order amounts differ), while the rest of
    # the clients keep claiming against the exhausted budget.
    calls = []
    for i, coupon in enumerate(coupons):
        holder = coupon.profile.user_id
        for order in ("a", "b"):
            calls.append(
                lambda c=coupon, h=holder, o=order, i=i: services.redeem_coupon(
                    code=c.code, user_id=h, order_id=f"{c.code}-{o}", order_amount=D("30.00") + i
                )
            )
    calls += [lambda u=u: services.claim_coupon(rule_id=rule.pk, user_id=u + "-late") for u in users[: CLIENTS - 2 * k]]
    results = run_at_once(calls)

    redemptions = [r for r in results if isinstance(r, Redemption)]
    reasons = Counter(r.reason for r in results if isinstance(r, errors.CouponError))
    assert len(redemptions) == k
    assert reasons["COUPON_ALREADY_USED"] == k
    assert Redemption.objects.filter(rule=rule).values("coupon").distinct().count() == k
    assert Redemption.objects.filter(rule=rule).count() == k
    # Each redemption spent less than its coupon had committed: that difference is free again,
    # and some late claimers may have taken it, but never more than the budget allows.
    assert_books_balance(rule)
    report = selectors.rule_report(rule=rule)
    assert report.redeemed == k
    assert report.spent == sum(r.discount for r in redemptions)
    assert report.issued == report.redeemed + report.unused + report.expired + report.revoked
    assert report.committed + report.spent + report.remaining == rule.budget


def test_one_person_claiming_from_many_clients_gets_one_coupon():
    rule = CouponRuleFactory(per_user_limit=1)
    person(user_id="same-person")
    results = run_at_once(
        [
            lambda i=i: services.claim_coupon(rule_id=rule.pk, user_id="same-person", request_id=f"q{i}")
            for i in range(50)
        ]
    )
    assert sum(isinstance(r, Coupon) for r in results) == 1
    assert Counter(r.reason for r in results if isinstance(r, errors.CouponError)) == {"PER_USER_LIMIT_REACHED": 49}
    assert_books_balance(rule)


def test_the_same_request_replayed_by_many_clients_yields_one_coupon_for_all():
    rule = CouponRuleFactory(per_user_limit=5)
    person(user_id="replayer")
    results = run_at_once(
        [lambda: services.claim_coupon(rule_id=rule.pk, user_id="replayer", request_id="one-request")] * 50
    )
    assert all(isinstance(r, Coupon) for r in results), [r for r in results if not isinstance(r, Coupon)][:3]
    assert len({r.pk for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert Coupon.objects.filter(rule=rule).count() == 1


def test_rollbacks_racing_redemptions_and_claims_keep_the_books_balanced():
    rule = CouponRuleFactory(value=D("10.00"), budget=D("200.00"), per_user_limit=1)
    holders = [person() for _ in range(20)]
    coupons = [services.issue_coupon(rule=rule, profile=p) for p in holders]
    for i, c in enumerate(coupons[:10]):
        services.redeem_coupon(code=c.code, user_id=holders[i].user_id, order_id=f"o{i}", order_amount=D("50"))
    calls = [lambda i=i: services.rollback_order(order_id=f"o{i}") for i in range(10)]
    calls += [
        lambda i=i: services.redeem_coupon(
            code=coupons[i].code, user_id=holders[i].user_id, order_id=f"n{i}", order_amount=D("50")
        )
        for i in range(20)
    ]
    calls += [lambda i=i: services.claim_coupon(rule_id=rule.pk, user_id=f"extra-{i}") for i in range(30)]
    run_at_once(calls)
    assert_books_balance(rule)
    assert Redemption.objects.filter(rule=rule, rolled_back_at__isnull=True).values("coupon").distinct().count() == (
        Redemption.objects.filter(rule=rule, rolled_back_at__isnull=True).count()
    )


def _waiting_on_a_lock(statement: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND query LIKE %s",
            [f"%{statement}%"],
        )
        return cursor.fetchone()[0] > 0


def test_a_claim_that_loses_the_persons_last_slot_while_waiting_for_the_rule_moves_nothing():
    """The second claim passes the holding check (the first is not committed yet), waits for the
    rule row, then finds the slot taken: its reserve must be undone with it."""
    rule = CouponRuleFactory(value=D("10.00"), budget=D("100.00"), per_user_limit=1)
    person(user_id="racer")
    first_claimed, release = threading.Event(), threading.Event()

    def first():
        try:
            with transaction.atomic():
                coupon = services.claim_coupon(rule_id=rule.pk, user_id="racer", request_id="a")
                first_claimed.set()
                assert release.wait(10)
            return coupon
        finally:
            connection.close()

    def second():
        assert first_claimed.wait(10)
        try:
            return services.claim_coupon(rule_id=rule.pk, user_id="racer", request_id="b")
        except errors.CouponError as refusal:
            return refusal
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.submit(first), pool.submit(second)
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock("coupons_claim"):
            assert time.monotonic() < deadline and not b.done(), "the second claim never waited for the rule"
            time.sleep(0.02)
        release.set()
        a, b = a.result(), b.result()
    assert isinstance(a, Coupon)
    assert isinstance(b, errors.PerUserLimitReached) and b.reason == "PER_USER_LIMIT_REACHED"
    rule.refresh_from_db()
    assert (rule.issued_count, rule.committed) == (1, D("10.00"))
    assert Coupon.objects.filter(rule=rule).count() == 1
    assert_books_balance(rule)


def test_the_same_order_redeemed_from_many_clients_at_once_is_one_redemption():
    rule = CouponRuleFactory(value=D("10.00"), budget=D("100.00"))
    holder = person(user_id="buyer")
    coupon = services.issue_coupon(rule=rule, profile=holder)
    results = run_at_once(
        [
            lambda: services.redeem_coupon(code=coupon.code, user_id="buyer", order_id="one", order_amount=D("50"))
            for _ in range(30)
        ]
    )
    assert all(isinstance(r, Redemption) for r in results), [r for r in results if not isinstance(r, Redemption)][:3]
    assert len({r.pk for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert Redemption.objects.filter(coupon=coupon).count() == 1
    assert_books_balance(rule)


def test_a_claim_racing_a_merge_counts_against_the_survivors_limit():
    """u1 holds the offer's one coupon; u2 (the same person, by phone) claims while the merge of u2
    into u1 is in flight. The claim waits for the merge and is refused: no holding or coupon lands
    on the profile merged away, and the person holds one coupon."""
    from profiles.models import Profile
    from profiles.services import identify

    phone = ("phone", "+8613800138000")
    rule = CouponRuleFactory(value=D("10.00"), budget=D("100.00"), per_user_limit=1)
    identify(user_id="u2", identities=[phone])
    identify(user_id="u1")
    services.claim_coupon(rule_id=rule.pk, user_id="u1")
    merged, release = threading.Event(), threading.Event()

    def merge():
        try:
            with transaction.atomic():
                identify(user_id="u1", identities=[phone])  # u2 is merged into u1
                merged.set()
                assert release.wait(10)
        finally:
            connection.close()

    def claim():
        assert merged.wait(10)
        try:
            return services.claim_coupon(rule_id=rule.pk, user_id="u2", request_id="racing")
        except errors.CouponError as refusal:
            return refusal
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        m, c = pool.submit(merge), pool.submit(claim)
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock("coupons_claim"):
            assert time.monotonic() < deadline and not c.done(), f"the claim never waited for the merge: {c}"
            time.sleep(0.02)
        release.set()
        m.result()
        outcome = c.result()
    survivor, gone = Profile.objects.get(user_id="u1"), Profile.objects.get(user_id="u2")
    assert gone.merged_into_id == survivor.pk
    assert isinstance(outcome, errors.PerUserLimitReached), outcome
    assert list(RuleHolding.objects.filter(rule=rule).values_list("profile_id", "issued")) == [(survivor.pk, 1)]
    assert list(Coupon.objects.filter(rule=rule).values_list("profile_id", flat=True)) == [survivor.pk]
    assert_books_balance(rule)


def test_a_merge_waits_for_a_claim_in_flight_and_carries_its_holding():
    """The other order: the claim of u2 holds its profile when the merge starts; the merge waits
    for it and then moves the fresh holding and coupon to the survivor."""
    from profiles.models import Profile
    from profiles.services import identify

    phone = ("phone", "+8613800138000")
    rule = CouponRuleFactory(value=D("10.00"), budget=D("100.00"), per_user_limit=1)
    identify(user_id="u2", identities=[phone])
    identify(user_id="u1")
    claimed, release = threading.Event(), threading.Event()

    def claim():
        try:
            with transaction.atomic():
                coupon = services.claim_coupon(rule_id=rule.pk, user_id="u2", request_id="first")
                claimed.set()
                assert release.wait(10)
            return coupon
        finally:
            connection.close()

    def merge():
        assert claimed.wait(10)
        try:
            identify(user_id="u1", identities=[phone])
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        c, m = pool.submit(claim), pool.submit(merge)
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock("profiles_profile"):
            assert time.monotonic() < deadline and not m.done(), "the merge never waited for the claim"
            time.sleep(0.02)
        release.set()
        c.result(), m.result()
    survivor = Profile.objects.get(user_id="u1")
    assert list(RuleHolding.objects.filter(rule=rule).values_list("profile_id", "issued")) == [(survivor.pk, 1)]
    assert list(Coupon.objects.filter(rule=rule).values_list("profile_id", flat=True)) == [survivor.pk]
    with pytest.raises(errors.PerUserLimitReached):
        services.claim_coupon(rule_id=rule.pk, user_id="u1")
