"""Merges keep campaign results: a member merged into another profile after the send keeps their
conversion in the campaign's results, and their assignment and deliveries follow the survivor."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from campaigns import services
from campaigns.models import Assignment, CampaignStatus, Delivery
from campaigns.selectors import campaign_results
from profiles.models import Profile
from profiles.services import identify
from tests.factories.campaigns import CampaignFactory, add_events, make_profiles

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
