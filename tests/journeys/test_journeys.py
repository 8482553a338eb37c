"""Journeys: steps walked per person (send, wait, wait for an event with a timeout, branch),
one delivery per person and step, the goal event ending a run and cancelling its pending
messages at once, and the counts per step in the API and the admin."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from campaigns import services as campaign_services
from campaigns.models import CampaignStatus, ChannelKind, Delivery
from journeys import services
from journeys.models import JourneyRun, RunStatus
from profiles.models import Profile, ProfileTag, Tag
from tests.campaigns.receiver import Receiver
from tests.factories.campaigns import CampaignFactory, ChannelFactory, add_events, make_profiles

pytestmark = pytest.mark.django_db


def _journey(steps_by_variant_name, *, people=4, **fields):
    profiles = make_profiles(people)
    campaign = CampaignFactory(variants=[("A", 50), ("B", 50)], **fields)
    variants = dict(campaign.variants.values_list("name", "pk"))
    steps = [{**s, "variant": variants.get(s.get("variant"))} for s in steps_by_variant_name]
    services.set_steps(campaign=campaign, steps=steps)
    return campaign, profiles


def _phases(campaign, profile) -> set[str]:
    return set(Delivery.objects.filter(campaign=campaign, profile=profile).values_list("phase", flat=True))


def _step_phase(campaign, position) -> str:
    return f"step:{campaign.journey_steps.get(position=position).pk}"


def test_send_then_wait_then_send_one_delivery_per_person_and_step():
    campaign, people = _journey(
        [{"kind": "send", "variant": "A"}, {"kind": "wait", "wait_minutes": 60}, {"kind": "send", "variant": "B"}]
    )
    t0 = timezone.now()
    assert services.launch_journey(campaign=campaign, now=t0) == 4
    services.advance_due(now=t0)
    assert _phases(campaign, people[0]) == {_step_phase(campaign, 0)}
    # Advancing again before the wait is over sends nothing more.
    services.advance_due(now=t0 + dt.timedelta(minutes=30))
    assert Delivery.objects.filter(campaign=campaign).count() == 4
    services.advance_due(now=t0 + dt.timedelta(minutes=61))
    assert _phases(campaign, people[0]) == {_step_phase(campaign, 0), _step_phase(campaign, 2)}
    assert set(JourneyRun.objects.filter(campaign=campaign).values_list("status", flat=True)) == {RunStatus.COMPLETED}
    # A run put back (a crash replayed, an operator's reset) cannot message anyone twice per step.
    JourneyRun.objects.filter(campaign=campaign).update(status=RunStatus.ACTIVE, position=0, wake_at=t0)
    services.advance_due(now=t0 + dt.timedelta(minutes=200))
    assert Delivery.objects.filter(campaign=campaign).count() == 8


def test_journey_sends_go_through_the_real_channel_with_their_step():
    campaign, people = _journey([{"kind": "send", "variant": "A"}], people=3, holdout_percent=Decimal(0))
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        services.launch_journey(campaign=campaign)
        services.advance_due()
        campaign_services.deliver(delivery_ids=list(Delivery.objects.values_list("id", flat=True)))
    assert sorted(r["user_id"] for r in gateway.requests) == sorted(p.user_id for p in people)
    assert {r["variant"] for r in gateway.requests} == {"A"}
    assert Delivery.objects.filter(campaign=campaign, status="sent").count() == 3


def test_wait_for_an_event_moves_on_when_it_comes_and_takes_goto_on_timeout():
    campaign, people = _journey(
        [
            {"kind": "wait_event", "event": "app_open", "wait_minutes": 120, "goto": 2},
            {"kind": "send", "variant": "A"},  # came back: A
            {"kind": "send", "variant": "B"},  # timed out: B
        ],
        people=2,
    )
    t0 = timezone.now()
    services.launch_journey(campaign=campaign, now=t0)
    services.advance_due(now=t0)
    assert not Delivery.objects.filter(campaign=campaign).exists()
    add_events([(people[0].user_id, "app_open", t0 + dt.timedelta(minutes=5))])
    services.advance_due(now=t0 + dt.timedelta(minutes=6))
    assert _phases(campaign, people[0]) == {_step_phase(campaign, 1), _step_phase(campaign, 2)}
    assert _phases(campaign, people[1]) == set()
    services.advance_due(now=t0 + dt.timedelta(minutes=121))
    assert _phases(campaign, people[1]) == {_step_phase(campaign, 2)}


@pytest.mark.parametrize("on", ["tag", "trait", "event"])
def test_branch_on_a_tag_a_trait_or_an_event(on):
    branch = {
        "tag": {"branch_on": "tag", "tag": "vip"},
        "trait": {"branch_on": "trait", "trait": "city", "trait_value": "Suzhou"},
        "event": {"branch_on": "event", "event": "search"},
    }[on]
    campaign, people = _journey(
        [{"kind": "branch", "goto": 2, **branch}, {"kind": "send", "variant": "A"}, {"kind": "send", "variant": "B"}],
        people=2,
    )
    yes = people[0]
    if on == "tag":
        ProfileTag.objects.create(profile=yes, tag=Tag.objects.create(name="vip"))
    elif on == "trait":
        Profile.objects.filter(pk=yes.pk).update(city="Suzhou")
    t0 = timezone.now()
    services.launch_journey(campaign=campaign, now=t0)
    if on == "event":
        add_events([(yes.user_id, "search", t0 + dt.timedelta(seconds=1))])
    services.advance_due(now=t0 + dt.timedelta(seconds=2))
    b, a = _step_phase(campaign, 2), _step_phase(campaign, 1)
    assert _phases(campaign, yes) == {b}
    assert _phases(campaign, people[1]) == {a, b}


def test_the_goal_event_ends_the_run_and_cancels_pending_messages_at_ingestion(api_client):
    campaign, people = _journey(
        [{"kind": "send", "variant": "A"}, {"kind": "wait", "wait_minutes": 60}, {"kind": "send", "variant": "B"}],
        people=2,
    )
    t0 = timezone.now()
    services.launch_journey(campaign=campaign, now=t0)
    services.advance_due(now=t0)
    buyer = people[0]
    pending = Delivery.objects.get(campaign=campaign, profile=buyer)
    assert pending.status == "pending"
    event = {
        "event_id": str(uuid.uuid4()),
        "name": "order_paid",
        "kind": "business",
        "timestamp": timezone.now().isoformat(),
        "user_id": buyer.user_id,
        "properties": {"order_id": "o-1", "amount": "10.00"},
    }
    assert api_client.post("/api/v1/events", {"events": [event]}, format="json").json()["accepted"] == 1
    # Already done when the request returns: no worker or beat tick needed.
    run = JourneyRun.objects.get(campaign=campaign, profile=buyer)
    assert run.status == RunStatus.EXITED and run.ended_at is not None
    pending.refresh_from_db()
    assert pending.status == "skipped" and pending.reason == "EXITED: order_paid"
    services.advance_due(now=t0 + dt.timedelta(minutes=61))
    assert _phases(campaign, buyer) == {_step_phase(campaign, 0)}
    assert len(_phases(campaign, people[1])) == 2


def test_bad_steps_are_refused_with_the_step_and_the_reason(api_client):
    campaign = CampaignFactory(variants=[("A", 100)])
    url = f"/api/v1/campaigns/{campaign.pk}/journey"
    response = api_client.put(url, {"steps": [{"kind": "wait"}]}, format="json")
    assert response.status_code == 422 and "steps[0]" in response.json()["fields"]
    response = api_client.put(url, {"steps": [{"kind": "send", "variant": "Z"}]}, format="json")
    assert response.status_code == 400
    response = api_client.put(
        url, {"steps": [{"kind": "branch", "branch_on": "tag", "tag": "x", "goto": 9}]}, format="json"
    )
    assert response.status_code == 422 and "goto" in response.json()["fields"]["steps[0]"]
    assert api_client.put(url, {"steps": []}, format="json").status_code == 400
    assert api_client.get("/api/v1/campaigns/999999/journey").status_code == 404


def test_api_sets_steps_launches_and_counts_each_step(api_client):
    make_profiles(3)
    campaign = CampaignFactory(variants=[("A", 100)])
    url = f"/api/v1/campaigns/{campaign.pk}/journey"
    steps = [{"kind": "send", "variant": "A"}, {"kind": "wait", "wait_minutes": 30}]
    assert api_client.put(url, {"steps": steps}, format="json").status_code == 200
    assert api_client.post(f"{url}/launch").json() == {"entered": 3}
    assert api_client.post(f"{url}/launch").status_code == 409
    services.advance_due()
    data = api_client.get(url).json()
    assert data["runs"] == {"active": 3, "completed": 0, "exited": 0, "merged": 0}
    send, wait = data["steps"]
    assert (send["reached"], send["waiting"], send["deliveries"]["created"]) == (3, 0, 3)
    assert (wait["reached"], wait["waiting"], wait["deliveries"]) == (3, 3, None)
    assert api_client.put(url, {"steps": steps}, format="json").status_code == 409


def test_the_journey_page_shows_the_steps_with_counts_and_a_chart(client, make_staff):
    client.force_login(make_staff("Operations"))
    campaign, _people = _journey([{"kind": "send", "variant": "A"}], people=2)
    services.launch_journey(campaign=campaign)
    services.advance_due()
    page = client.get(reverse("admin:journeys_journey_steps", args=[campaign.pk]))
    html = page.content.decode()
    assert page.status_code == 200 and 'id="journey-chart"' in html and "Send variant A" in html
    assert page.context["journey"]["steps"][0]["reached"] == 2
    assert client.get(reverse("admin:journeys_journey_change", args=[campaign.pk])).status_code == 200
    assert campaign.__class__.objects.get(pk=campaign.pk).status == CampaignStatus.RUNNING


def test_a_campaign_with_steps_is_not_launched_as_a_single_send():
    from campaigns import validation

    campaign, _people = _journey([{"kind": "send", "variant": "A"}], people=1)
    assert "journey" in validation.launch_problems(campaign)["status"]
    assert "status" not in validation.launch_problems(CampaignFactory())


def test_a_journey_nobody_is_in_any_more_completes_once_its_messages_are_settled():
    campaign, people = _journey([{"kind": "send", "variant": "A"}], people=2, holdout_percent=Decimal(0))
    with Receiver() as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        services.launch_journey(campaign=campaign)
        services.advance_due()
        # Every run ended, but two messages are still to send: the journey stays running.
        campaign.refresh_from_db()
        assert campaign.status == CampaignStatus.RUNNING
        campaign_services.deliver(delivery_ids=list(Delivery.objects.values_list("id", flat=True)))
    services.advance_due()
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.SENT and campaign.results_snapshot is not None
    assert len(gateway.requests) == len(people)


def _goal(*people):
    from types import SimpleNamespace

    services.on_events_ingested([SimpleNamespace(name="order_paid", user_id=p.user_id) for p in people])


def test_the_goal_event_ends_runs_of_a_paused_journey_and_nothing_goes_after_resuming():
    campaign, people = _journey(
        [{"kind": "send", "variant": "A"}, {"kind": "wait", "wait_minutes": 60}, {"kind": "send", "variant": "B"}],
        people=2,
    )
    t0 = timezone.now()
    services.launch_journey(campaign=campaign, now=t0)
    services.advance_due(now=t0)
    campaign_services.pause_campaign(campaign_id=campaign.pk)
    buyer = people[0]
    _goal(buyer)
    assert JourneyRun.objects.get(campaign=campaign, profile=buyer).status == RunStatus.EXITED
    assert Delivery.objects.get(campaign=campaign, profile=buyer).status == "skipped"
    campaign_services.resume_campaign(campaign_id=campaign.pk)
    services.advance_due(now=t0 + dt.timedelta(minutes=61))
    assert _phases(campaign, buyer) == {_step_phase(campaign, 0)}
    assert len(_phases(campaign, people[1])) == 2


def test_a_step_message_back_to_pending_after_the_goal_is_dropped_and_gives_its_coupon_back():
    from coupons.models import Coupon, CouponStatus
    from tests.factories.coupons import CouponRuleFactory

    campaign, people = _journey([{"kind": "send", "variant": "A"}], people=2, holdout_percent=Decimal(0))
    rule = CouponRuleFactory(value=Decimal("5.00"))
    campaign.variants.update(coupon_rule_id=rule.pk)
    buyer, other = people
    services.launch_journey(campaign=campaign)
    services.advance_due()
    ids = list(Delivery.objects.filter(campaign=campaign).values_list("id", flat=True))
    # The provider fails: both messages wait for a retry, each with its coupon issued.
    with Receiver(status=503) as gateway:
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url)
        campaign_services.deliver(delivery_ids=ids)
    retrying = Delivery.objects.get(campaign=campaign, profile=buyer)
    assert retrying.status == "pending" and retrying.coupon_code
    _goal(buyer)
    retrying.refresh_from_db()
    assert retrying.status == "skipped" and retrying.reason == "EXITED: order_paid"
    assert Coupon.objects.get(code=retrying.coupon_code).status == CouponStatus.REVOKED
    # A message in the hands of a worker when the goal came (then handed back: a deferral, a
    # release) is dropped when claimed again, never posted.
    held = Delivery.objects.get(campaign=campaign, profile=other)
    Delivery.objects.filter(pk=held.pk).update(status="sending", lease=uuid.uuid4())
    _goal(other)
    Delivery.objects.filter(pk=held.pk).update(status="pending", lease=None, not_before=None)
    with Receiver() as gateway:
        from campaigns.models import Channel

        Channel.objects.filter(kind=ChannelKind.PUSH).update(url=gateway.url)
        campaign_services.deliver(delivery_ids=ids)
    assert gateway.requests == []
    held.refresh_from_db()
    assert held.status == "skipped" and held.reason == "EXITED: order_paid"
    assert Coupon.objects.get(code=held.coupon_code).status == CouponStatus.REVOKED


def test_a_journey_is_launched_only_when_it_can_work_like_a_campaign(api_client):
    from campaigns.models import Campaign, ScheduleKind, Variant
    from journeys import errors
    from tests.factories.materials import MaterialFactory, MaterialVersionFactory

    campaign, _people = _journey([{"kind": "send", "variant": "A"}], people=2)
    draft = MaterialVersionFactory(material=MaterialFactory(channel="push"), title="Hi", body="Hi", defaults={})
    Variant.objects.filter(campaign=campaign, name="A").update(material_version=draft, title="", body="")
    with pytest.raises(errors.InvalidConfiguration) as refused:
        services.launch_journey(campaign=campaign)
    assert "variants" in str(refused.value.extra["fields"]) or "material" in str(refused.value).lower()
    response = api_client.post(f"/api/v1/campaigns/{campaign.pk}/journey/launch")
    assert response.status_code == 422 and response.json()["reason"] == "INVALID_CONFIGURATION"
    assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.DRAFT
    assert not JourneyRun.objects.filter(campaign=campaign).exists()
    # A triggered (or scheduled) campaign is not a journey: it would also send single messages.
    trigger = CampaignFactory(variants=[("A", 100)])
    services.set_steps(campaign=trigger, steps=[{"kind": "send", "variant": trigger.variants.get().pk}])
    Campaign.objects.filter(pk=trigger.pk).update(schedule_kind=ScheduleKind.TRIGGER)
    trigger.refresh_from_db()
    with pytest.raises(errors.InvalidConfiguration) as refused:
        services.launch_journey(campaign=trigger)
    assert "schedule_kind" in refused.value.extra["fields"]
    assert not JourneyRun.objects.filter(campaign=trigger).exists()


def _post_steps(client, campaign, rows):
    data = {
        "journey_steps-TOTAL_FORMS": str(len(rows)),
        "journey_steps-INITIAL_FORMS": "0",
        "journey_steps-MIN_NUM_FORMS": "0",
        "journey_steps-MAX_NUM_FORMS": "1000",
    }
    for i, row in enumerate(rows):
        for k, v in row.items():
            data[f"journey_steps-{i}-{k}"] = "" if v is None else str(v)
        data[f"journey_steps-{i}-campaign"] = str(campaign.pk)
    return client.post(reverse("admin:journeys_journey_change", args=[campaign.pk]), data)


def test_admin_steps_keep_their_goto_when_positions_are_renumbered(client, make_staff):
    from journeys.models import JourneyStep

    client.force_login(make_staff("Operations"))
    campaign = CampaignFactory(variants=[("A", 50), ("B", 50)])
    a, b = (campaign.variants.get(name=n).pk for n in ("A", "B"))
    # Typed with gaps (10, 20, 30): the branch goes to the step typed 30, sending B.
    rows = [
        {"position": 10, "kind": "branch", "branch_on": "tag", "tag": "vip", "goto": 30, "wait_minutes": 0},
        {"position": 20, "kind": "send", "variant": a, "wait_minutes": 0},
        {"position": 30, "kind": "send", "variant": b, "wait_minutes": 0},
    ]
    response = _post_steps(client, campaign, rows)
    assert response.status_code == 302, re.findall(r"errorlist[^>]*>(.*?)</ul>", response.content.decode(), re.S)
    steps = list(JourneyStep.objects.filter(campaign=campaign).order_by("position"))
    assert [s.position for s in steps] == [0, 1, 2]
    assert steps[0].goto == 2 and steps[2].variant_id == b
    # A goto naming no typed step is refused with the step and the reason, nothing saved.
    rows[0]["goto"] = 25
    response = _post_steps(client, campaign, rows)
    assert response.status_code == 200 and "goto 25" in response.content.decode()
    assert JourneyStep.objects.get(campaign=campaign, position=0).goto == 2


def test_a_merged_person_gets_one_message_per_step_and_leaves_on_either_user_id():
    from profiles.services import identify

    campaign, people = _journey(
        [{"kind": "send", "variant": "A"}, {"kind": "wait", "wait_minutes": 60}, {"kind": "send", "variant": "B"}],
        people=3,
    )
    t0 = timezone.now()
    services.launch_journey(campaign=campaign, now=t0)
    services.advance_due(now=t0)
    # Two of the audience turn out to be one person (a shared phone): merged.
    identify(user_id=people[0].user_id, identities=[("phone", "+8613800138000")])
    identify(user_id=people[1].user_id, identities=[("phone", "+8613800138000")])
    merged = Profile.objects.get(pk=people[0].pk)
    survivor = merged.merged_into or Profile.objects.get(pk=people[1].pk)
    if merged.merged_into is None:  # whichever way identify merged them
        merged, survivor = Profile.objects.get(pk=people[1].pk), Profile.objects.get(pk=people[0].pk)
    assert merged.merged_into_id == survivor.pk
    assert JourneyRun.objects.filter(campaign=campaign, status=RunStatus.ACTIVE, profile=merged).count() == 0
    services.advance_due(now=t0 + dt.timedelta(minutes=61))
    step2 = _step_phase(campaign, 2)
    assert Delivery.objects.filter(campaign=campaign, phase=step2, profile__in=[merged, survivor]).count() == 1
    # The goal event under the merged-away user id ends the survivor's run.
    _goal(merged)
    assert JourneyRun.objects.get(campaign=campaign, profile=survivor).status == RunStatus.EXITED


def test_a_run_follows_its_person_into_a_profile_outside_the_journey():
    from profiles.services import identify

    campaign, people = _journey(
        [{"kind": "send", "variant": "A"}, {"kind": "wait", "wait_minutes": 60}, {"kind": "send", "variant": "B"}],
        people=1,
    )
    services.launch_journey(campaign=campaign)
    identify(user_id=people[0].user_id, identities=[("phone", "+8613800138001")])
    identify(user_id="new-account", identities=[("phone", "+8613800138001")])
    survivor = Profile.objects.get(user_id="new-account")
    assert Profile.objects.get(pk=people[0].pk).merged_into == survivor
    run = JourneyRun.objects.get(campaign=campaign)
    assert run.profile_id == survivor.pk and run.status == RunStatus.ACTIVE
    _goal(survivor)
    assert JourneyRun.objects.get(campaign=campaign).status == RunStatus.EXITED


def test_a_loop_without_a_wait_is_refused():
    campaign = CampaignFactory(variants=[("A", 100)])
    a = campaign.variants.get().pk
    looping = [
        {"kind": "send", "variant": a},
        {"kind": "branch", "branch_on": "tag", "tag": "vip", "goto": 0},
    ]
    with pytest.raises(services.errors.InvalidSteps) as refused:
        services.set_steps(campaign=campaign, steps=looping)
    assert "wait" in refused.value.extra["fields"]["steps[0]"]
    # The same loop through a wait is a reminder cycle: allowed.
    waiting = [
        {"kind": "send", "variant": a},
        {"kind": "wait", "wait_minutes": 60},
        {"kind": "branch", "branch_on": "tag", "tag": "vip", "goto": 1},
    ]
    assert len(services.set_steps(campaign=campaign, steps=waiting)) == 3


def test_a_merge_into_a_holdout_member_keeps_the_person_held_out():
    from campaigns.models import Assignment, AssignmentRole, DeliveryStatus
    from profiles.services import identify

    campaign, people = _journey(
        [{"kind": "send", "variant": "A"}, {"kind": "wait", "wait_minutes": 60}, {"kind": "send", "variant": "B"}],
        people=12,
        holdout_percent=Decimal(50),
    )
    t0 = timezone.now()
    services.launch_journey(campaign=campaign, now=t0)
    services.advance_due(now=t0)
    roles = dict(Assignment.objects.filter(campaign=campaign).values_list("profile_id", "role"))
    held = next(p for p in people if roles[p.pk] == AssignmentRole.HOLDOUT)
    member = next(p for p in people if roles[p.pk] != AssignmentRole.HOLDOUT)
    assert Delivery.objects.filter(campaign=campaign, profile=member, status=DeliveryStatus.PENDING).count() == 1
    # The member's user id is identified first, then the holdout's: the holdout's profile survives.
    identify(user_id=member.user_id, identities=[("phone", "+8613800138009")])
    identify(user_id=held.user_id, identities=[("phone", "+8613800138009")])
    assert Profile.objects.get(pk=member.pk).merged_into_id == held.pk
    assert not JourneyRun.objects.filter(campaign=campaign, profile=held).exists()
    assert JourneyRun.objects.get(campaign=campaign, profile=member).status == RunStatus.MERGED
    # No step message of the journey is left to go to the survivor, now or after the wait.
    assert not Delivery.objects.filter(campaign=campaign, profile=held, status=DeliveryStatus.PENDING).exists()
    services.advance_due(now=t0 + dt.timedelta(minutes=61))
    assert not Delivery.objects.filter(campaign=campaign, profile=held, status=DeliveryStatus.PENDING).exists()
