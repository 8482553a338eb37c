"""Merges keep campaign results: a member merged into another profile after the send keeps their
conversion in the campaign's results, and their assignment and deliveries follow the survivor."""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from decimal import Decimal

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from campaigns import sending, services
from campaigns.models import Assignment, CampaignStatus, Delivery
from campaigns.selectors import campaign_results
from coupons import services as coupon_services
from coupons.models import Coupon, CouponRule, Redemption
from profiles.models import Profile
from profiles.services import identify
from tests.factories.campaigns import CampaignFactory, add_events, make_profiles
from tests.factories.coupons import CouponRuleFactory

pytestmark = pytest.mark.django_db

PHONE = ("phone", "+8613800138000")


def test_a_merged_members_conversion_stays_in_the_results():
    make_profiles(20)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
    services.start_send(campaign_id=campaign.pk)
    sent_at = timezone.now() - dt.timedelta(days=2)
    Delivery.objects.filter(campaign=campaign).update(status="sent", sent_at=sent_at)
    Assignment.objects.filter(campaign=campaign).update(assigned_at=sent_at)
    member = campaign.assignments.filter(variant__name="A").first()
    add_events([(member.user_id, "order_paid", sent_at + dt.timedelta(hours=1))], {"amount": "10.00"})
    before = {g["name"]: g["converted"] for g in campaign_results(campaign)["groups"]}
    assert before["A"] == 1

    # The member logs in with a new account that shares their phone: merged into it.
    identify(user_id=member.user_id, identities=[PHONE])
    identify(user_id="new-account", identities=[PHONE])
    survivor = Profile.objects.get(user_id="new-account")
    assert Profile.objects.get(user_id=member.user_id).merged_into == survivor

    after = {g["name"]: g for g in campaign_results(campaign)["groups"]}
    assert after["A"]["converted"] == 1
    assert after["A"]["revenue"] == "10.00"
    assert Assignment.objects.get(campaign=campaign, profile=survivor).variant.name == "A"
    assert Delivery.objects.filter(campaign=campaign, profile=survivor).count() == 1


def test_two_members_of_one_campaign_merged_are_one_person_in_the_results():
    """Both profiles were members: after the merge the survivor holds the one assignment, the
    person is assigned once, the merged user id's conversion is counted in the survivor's group,
    and the merged profile's message not sent yet is skipped rather than sent a second time."""
    make_profiles(20)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
    services.start_send(campaign_id=campaign.pk)
    sent_at = timezone.now() - dt.timedelta(days=2)
    survivor_row, merged_row = campaign.assignments.order_by("position")[:2]
    Assignment.objects.filter(campaign=campaign).update(assigned_at=sent_at)
    Delivery.objects.filter(campaign=campaign).exclude(profile_id=merged_row.profile_id).update(
        status="sent", sent_at=sent_at
    )
    add_events([(merged_row.user_id, "order_paid", sent_at + dt.timedelta(hours=1))], {"amount": "10.00"})
    assigned_before = sum(g["assigned"] for g in campaign_results(campaign)["groups"])
    assert assigned_before == 20

    identify(user_id=merged_row.user_id, identities=[PHONE])
    identify(user_id=survivor_row.user_id, identities=[PHONE])  # the merged member joins the survivor
    survivor = Profile.objects.get(user_id=survivor_row.user_id)
    assert Profile.objects.get(user_id=merged_row.user_id).merged_into == survivor

    assert list(Assignment.objects.filter(campaign=campaign, profile__in=[survivor, merged_row.profile_id])) == [
        Assignment.objects.get(campaign=campaign, profile=survivor)
    ]
    groups = {g["name"]: g for g in campaign_results(campaign)["groups"]}
    assert sum(g["assigned"] for g in groups.values()) == 19
    survivor_group = Assignment.objects.get(campaign=campaign, profile=survivor).variant.name
    assert groups[survivor_group]["converted"] == 1
    assert sum(g["converted"] for g in groups.values()) == 1
    left = Delivery.objects.get(campaign=campaign, profile_id=merged_row.profile_id)
    assert (left.status, left.reason) == ("skipped", f"MERGED: into {survivor.user_id}")
    assert Delivery.objects.filter(campaign=campaign, profile=survivor).count() == 1


def _two_members_merged(campaign, *, survivor_role=None):
    """Send `campaign` to 20 profiles; return (survivor, merged) assignments, the survivor taken
    from `survivor_role`'s members when given, the merged one from a variant's."""
    services.start_send(campaign_id=campaign.pk)
    rows = campaign.assignments.order_by("position")
    survivor_row = rows.filter(role=survivor_role).first() if survivor_role else rows.first()
    merged_row = rows.exclude(pk=survivor_row.pk).filter(variant__isnull=False).first()
    return survivor_row, merged_row


def _merge(merged_row, survivor_row) -> Profile:
    identify(user_id=merged_row.user_id, identities=[PHONE])
    identify(user_id=survivor_row.user_id, identities=[PHONE])
    survivor = Profile.objects.get(user_id=survivor_row.user_id)
    assert Profile.objects.get(user_id=merged_row.user_id).merged_into == survivor
    return survivor


def test_a_message_claimed_by_a_worker_is_skipped_by_the_merge_and_a_handed_back_one_at_claim():
    make_profiles(20)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
    survivor_row, merged_row = _two_members_merged(campaign)
    lease = uuid.uuid4()
    claimed = Delivery.objects.get(campaign=campaign, profile_id=merged_row.profile_id)
    Delivery.objects.filter(pk=claimed.pk).update(status="sending", lease=lease, claimed_at=timezone.now())

    survivor = _merge(merged_row, survivor_row)
    claimed.refresh_from_db()
    assert (claimed.status, claimed.reason, claimed.lease) == ("skipped", f"MERGED: into {survivor.user_id}", None)

    # Handed back to pending by an older run all the same: the claim drops it, nothing is posted.
    Delivery.objects.filter(pk=claimed.pk).update(status="pending", reason="")
    counts = sending.deliver_batch([claimed.pk])
    claimed.refresh_from_db()
    assert (claimed.status, claimed.reason, claimed.attempts) == ("skipped", f"MERGED: into {survivor.user_id}", 0)
    assert counts["skipped"] == 1 and counts["sent"] == 0


def test_a_merge_keeps_the_coupon_of_a_message_that_reached_the_person(django_capture_on_commit_callbacks):
    make_profiles(20)
    rule = CouponRuleFactory(value=Decimal("10.00"), budget=Decimal("1000.00"), per_user_limit=5)
    reached = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
    unsent = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
    survivor_row, merged_row = _two_members_merged(reached)
    services.start_send(campaign_id=unsent.pk)
    kept = coupon_services.claim_coupon(rule_id=rule.pk, user_id=merged_row.user_id)
    released = coupon_services.claim_coupon(rule_id=rule.pk, user_id=merged_row.user_id)
    # A receipt came while the message waited for a retry: it reached the person.
    Delivery.objects.filter(campaign=reached, profile_id=merged_row.profile_id).update(
        coupon_code=kept.code, sent_at=timezone.now(), delivered_at=timezone.now()
    )
    Delivery.objects.filter(campaign=unsent, profile_id=merged_row.profile_id).update(coupon_code=released.code)

    with django_capture_on_commit_callbacks(execute=True):
        _merge(merged_row, survivor_row)
    assert set(Delivery.objects.filter(profile_id=merged_row.profile_id).values_list("status", flat=True)) == {
        "skipped"
    }
    assert Coupon.objects.get(pk=kept.pk).status == "available"
    assert Coupon.objects.get(pk=released.pk).status == "revoked"


def test_a_held_out_survivor_never_gets_the_merged_members_treatment():
    make_profiles(20)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(50))
    survivor_row, merged_row = _two_members_merged(campaign, survivor_role="holdout")
    assert survivor_row.variant_id is None
    assert not Delivery.objects.filter(campaign=campaign, profile_id=survivor_row.profile_id).exists()
    assigned_before = sum(g["assigned"] for g in campaign_results(campaign)["groups"])

    survivor = _merge(merged_row, survivor_row)
    assert not Delivery.objects.filter(campaign=campaign, profile=survivor).exists()
    left = Delivery.objects.get(campaign=campaign, profile_id=merged_row.profile_id)
    assert (left.status, left.reason) == ("skipped", f"MERGED: into {survivor.user_id}")
    assert Assignment.objects.get(campaign=campaign, profile=survivor).role == "holdout"
    assert sum(g["assigned"] for g in campaign_results(campaign)["groups"]) == assigned_before - 1
    assert sending.deliver_batch([left.pk])["sent"] == 0


@pytest.mark.django_db(transaction=True)
def test_a_merge_and_a_refund_of_the_merged_members_order_do_not_deadlock(monkeypatch):
    """The merge gives back a skipped message's coupon of the rule whose redemption the refund
    rolls back (redemption -> coupon -> rule). The refund runs while the merge sits between the
    campaigns and the coupons listeners: the merge must hold no rule lock there, or the two
    deadlock (and `identify` runs the merge again)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    from profiles import lookup

    make_profiles(20)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
    survivor_row, merged_row = _two_members_merged(campaign)
    rule = CouponRuleFactory(value=Decimal("10.00"), budget=Decimal("1000.00"), per_user_limit=5)
    used = coupon_services.claim_coupon(rule_id=rule.pk, user_id=merged_row.user_id)
    coupon_services.redeem_coupon(
        code=used.code, user_id=merged_row.user_id, order_id="o-1", order_amount=Decimal("100")
    )
    unsent = coupon_services.claim_coupon(rule_id=rule.pk, user_id=merged_row.user_id)
    Delivery.objects.filter(campaign=campaign, profile_id=merged_row.profile_id).update(coupon_code=unsent.code)
    identify(user_id=merged_row.user_id, identities=[PHONE])
    in_merge, windows = threading.Event(), []

    def refund_window(into, merged):
        windows.append(into.pk)  # identify retries a merge that lost a deadlock: a second call
        in_merge.set()
        time.sleep(1.5)  # the refund takes its locks meanwhile

    # Sorted between "campaigns" and "community"/"coupons": runs after the campaigns listener.
    monkeypatch.setitem(lookup._merge_listeners, "campaigns~refund-window", refund_window)

    def merge():
        try:
            identify(user_id=survivor_row.user_id, identities=[PHONE])
        finally:
            connection.close()

    def refund():
        assert in_merge.wait(20)
        try:
            return coupon_services.rollback_order(order_id="o-1")
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        m, r = pool.submit(merge), pool.submit(refund)
        m.result()
        rolled_back = r.result()
    assert len(windows) == 1, "the merge deadlocked with the refund and was run again"
    survivor = Profile.objects.get(user_id=survivor_row.user_id)
    assert Profile.objects.get(user_id=merged_row.user_id).merged_into == survivor
    assert [x.rolled_back_at is not None for x in rolled_back] == [True]
    assert list(Redemption.objects.filter(order_id="o-1").values_list("profile_id", flat=True)) == [survivor.pk]
    assert Coupon.objects.get(pk=unsent.pk).status == "revoked"
    assert Coupon.objects.get(pk=used.pk).profile_id == survivor.pk


@pytest.mark.worker
def test_coupons_a_merge_could_not_give_back_at_once_are_given_back_by_a_worker(celery_worker, caplog):
    rule = CouponRuleFactory(budget=Decimal("100.00"), value=Decimal("10.00"))
    (holder,) = make_profiles(1)
    coupon = coupon_services.issue_coupon(rule=rule, profile=holder)
    assert CouponRule.objects.get(pk=rule.pk).committed == Decimal("10.00")
    # Another transaction holds the coupon's row (a refund, an issuance): the give-back right after
    # the merge's commit cannot take it within its lock timeout.
    holder_conn = psycopg.connect(_dsn(), autocommit=False)
    try:
        holder_conn.execute("SELECT 1 FROM coupons_coupon WHERE id = %s FOR UPDATE", [coupon.pk])
        # Returns while the other transaction still holds the row (released only below): it
        # waited its lock timeout, not for that transaction, and the merge's caller goes on.
        with caplog.at_level(logging.ERROR, "campaigns.services"):
            services._release_after_merge([coupon.code])
        assert "Giving back 1 coupon(s) of messages skipped by a merge failed" in caplog.text
        assert "lock timeout" in caplog.text
        assert Coupon.objects.get(pk=coupon.pk).status == "available"
    finally:
        holder_conn.rollback()
        holder_conn.close()
    # The worker's retry gives it back once the row is free.
    deadline = time.monotonic() + 60
    while Coupon.objects.get(pk=coupon.pk).status != "revoked":
        assert time.monotonic() < deadline, "the worker did not give the coupon back"
        time.sleep(0.2)
    assert CouponRule.objects.get(pk=rule.pk).committed == Decimal("0.00")
    services.give_back_coupons(codes=[coupon.code])  # again: nothing more comes back
    assert CouponRule.objects.get(pk=rule.pk).committed == Decimal("0.00")


def _dsn() -> str:
    settings_dict = connection.settings_dict
    return (
        f"host={settings_dict['HOST']} port={settings_dict['PORT']} dbname={settings_dict['NAME']} "
        f"user={settings_dict['USER']} password={settings_dict['PASSWORD']}"
    )
