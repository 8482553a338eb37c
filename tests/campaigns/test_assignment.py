"""Assignment: deterministic per (campaign, user), exact shares, and a frozen snapshot."""

import hashlib
from collections import Counter
from decimal import Decimal

import pytest

from campaigns import services
from campaigns.models import Assignment, CampaignStatus, Delivery
from profiles.models import ProfileTag
from tests.factories.campaigns import CampaignFactory, make_profiles

pytestmark = pytest.mark.django_db


def _groups(campaign) -> Counter:
    return Counter(
        (a.role, a.variant.name if a.variant else None)
        for a in Assignment.objects.filter(campaign=campaign).select_related("variant")
    )


def test_assignment_matches_the_weights_exactly_and_follows_the_hash_order():
    make_profiles(1000)
    campaign = CampaignFactory(holdout_percent=Decimal(10), variants=[("A", 70), ("B", 30)])
    assert services.snapshot_audience(campaign=campaign) == 1000
    assert _groups(campaign) == Counter({("test", "A"): 630, ("test", "B"): 270, ("holdout", None): 100})
    # Independently: order users by md5("<campaign>:<user>"); the first 10% are the holdout.
    order = sorted(
        (hashlib.md5(f"{campaign.pk}:{a.user_id}".encode()).hexdigest(), a.user_id)  # noqa: S324
        for a in Assignment.objects.filter(campaign=campaign)
    )
    expected_holdout = {u for _, u in order[:100]}
    actual = set(Assignment.objects.filter(campaign=campaign, role="holdout").values_list("user_id", flat=True))
    assert actual == expected_holdout
    assert services.snapshot_audience(campaign=campaign) == 0


def test_pilot_share_is_split_between_variants_and_the_rest_waits_for_rollout():
    make_profiles(400)
    campaign = CampaignFactory(holdout_percent=Decimal(10), pilot_percent=Decimal(20))
    services.snapshot_audience(campaign=campaign)
    assert _groups(campaign) == Counter(
        {("holdout", None): 40, ("pilot", "A"): 40, ("pilot", "B"): 40, ("rollout", None): 280}
    )


def test_triggered_members_arriving_a_few_at_a_time_stay_within_one_person_of_every_share():
    profiles = make_profiles(700)
    campaign = CampaignFactory(
        holdout_percent=Decimal(20),
        schedule_kind="trigger",
        trigger_event="cart_abandoned",
        variants=[("A", 30), ("B", 50), ("C", 20)],
    )
    shares = {("holdout", None): 0.2, ("test", "A"): 0.24, ("test", "B"): 0.4, ("test", "C"): 0.16}
    arrived = 0
    for size in (1, 2, 3, 7, 50, 1, 137, 499):
        batch = profiles[arrived : arrived + size]
        services.snapshot_audience(campaign=campaign, mode="arrival", only_profile_ids=[p.pk for p in batch])
        arrived += len(batch)
        groups = _groups(campaign)
        assert sum(groups.values()) == arrived
        for group, share in shares.items():
            assert abs(groups.get(group, 0) - arrived * share) < 1, (arrived, group, groups)


def test_audience_is_snapshotted_when_the_send_starts():
    profiles = make_profiles(50)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
    services.start_send(campaign_id=campaign.pk)
    # People who leave the segment afterwards stay in the test, and newcomers do not join it.
    ProfileTag.objects.filter(profile__in=profiles[:10]).delete()
    make_profiles(5, prefix="late")
    services.start_send(campaign_id=campaign.pk)
    assert Assignment.objects.filter(campaign=campaign).count() == 50
    assert Delivery.objects.filter(campaign=campaign).count() == 50
    assert not Delivery.objects.filter(campaign=campaign, user_id__startswith="late").exists()


def test_members_without_consent_get_a_skipped_delivery_with_the_reason():
    make_profiles(3, prefix="in")
    make_profiles(2, prefix="out", push_opt_in=False)
    campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
    services.start_send(campaign_id=campaign.pk)
    skipped = Delivery.objects.filter(campaign=campaign, status="skipped")
    assert set(skipped.values_list("user_id", "reason")) == {("out00000", "NO_CONSENT"), ("out00001", "NO_CONSENT")}
    assert Delivery.objects.filter(campaign=campaign, status="pending").count() == 3
