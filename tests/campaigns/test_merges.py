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
