"""Every campaign shape sends: 1 to 8 variants with any weights, holdout and pilot 0-90 %, each
schedule kind (now, at a time, cron, an event trigger, a tag gain) and each channel. Drawn by
hypothesis, each shape goes through the services a launch goes through and is sent to a real local
gateway (or the e-mail backend); every member must land in exactly one group, every group within
one person of its share, and every member of the phase outside the holdout must get exactly one
message."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.core import mail
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns import services
from campaigns.models import Assignment, Campaign, ChannelKind, Delivery, PendingTrigger
from profiles.models import Identity, IdentityKind, Profile, ProfileTag, Tag
from tests.campaigns.receiver import Receiver
from tests.factories.campaigns import ChannelFactory, gain_tag

pytestmark = pytest.mark.django_db

KINDS = ["now", "at", "cron", "trigger_event", "trigger_tag"]


@dataclass(frozen=True)
class Shape:
    weights: tuple[int, ...]
    holdout: int
    pilot: int
    kind: str
    channel: str
    audience: int
    arrival_batch: int = 7


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    weights = draw(st.lists(st.integers(0, 100), min_size=1, max_size=8).filter(lambda w: sum(w) > 0))
    kind = draw(st.sampled_from(KINDS))
    holdout = draw(st.integers(0, 90))
    # A pilot applies to one-off sends, and holdout and pilot together stay below 100 %.
    pilot = draw(st.integers(0, min(90, 99 - holdout))) if kind in ("now", "at") else 0
    return Shape(
        weights=tuple(weights),
        holdout=holdout,
        pilot=pilot,
        kind=kind,
        channel=draw(st.sampled_from(ChannelKind.values)),
        audience=draw(st.integers(0, 60)),
        arrival_batch=draw(st.integers(1, 20)),
    )


class _Rollback(Exception):
    pass


def _audience(n: int, tag: str) -> list[Profile]:
    """`n` people tagged `tag` who consented to every channel."""
    run = uuid.uuid4().hex[:8]
    profiles = Profile.objects.bulk_create(
        [
            Profile(
                user_id=f"s{run}-{i:03d}",
                push_opt_in=True,
                sms_opt_in=True,
                email_opt_in=True,
                phone=f"+8613{i:09d}",
                email=f"s{run}-{i}@example.com",
            )
            for i in range(n)
        ]
    )
    Identity.objects.bulk_create([Identity(profile=p, kind=IdentityKind.USER_ID, value=p.user_id) for p in profiles])
    tag_row, _ = Tag.objects.get_or_create(name=tag)
    ProfileTag.objects.bulk_create([ProfileTag(profile=p, tag=tag_row) for p in profiles])
    return profiles


def _schedule(kind: str) -> dict:
    return {
        "now": {},
        "at": {"at": timezone.now() - dt.timedelta(minutes=1)},
        "cron": {"cron": "*/5 * * * *"},
        "trigger_event": {"trigger_event": "cart_abandoned"},
        "trigger_tag": {"trigger_tag": "gained-today"},
    }[kind]


def send_shape(shape: Shape, gateway: Receiver) -> tuple[Campaign, list[Profile], set[str]]:
    """Create, launch and start the campaign as the workers would, then send its first phase.
    Returns the campaign, its audience and the phases sent."""
    for kind in (ChannelKind.PUSH, ChannelKind.SMS, ChannelKind.WEBHOOK):
        ChannelFactory(kind=kind, url=gateway.url)
    members = _audience(shape.audience, "shape-audience")
    segment = services.create_segment(name="shape", definition={"tag": "shape-audience"})
    campaign = services.create_campaign(
        name="shape",
        segment=segment,
        channel=shape.channel,
        variants=[{"name": f"V{i}", "weight": w, "title": "Hi", "body": "Body"} for i, w in enumerate(shape.weights)],
        holdout_percent=Decimal(shape.holdout),
        pilot_percent=Decimal(shape.pilot),
        schedule=_schedule(shape.kind),
        respect_quiet_hours=False,
        min_sample=0,
    )
    services.launch_campaign(campaign_id=campaign.pk)
    if shape.kind in ("now", "at"):
        services.start_send(campaign_id=campaign.pk)
    elif shape.kind == "cron":
        services.run_recurring_send(campaign_id=campaign.pk, run_at=timezone.now())
    elif shape.kind == "trigger_event":
        PendingTrigger.objects.bulk_create(
            [
                PendingTrigger(campaign=campaign, user_id=p.user_id, event_id=f"e{p.pk}", at=timezone.now())
                for p in members
            ]
        )
        # Members arrive a few at a time, as triggers do.
        services.handle_pending_triggers(limit=shape.arrival_batch)
    else:
        for i in range(0, len(members), shape.arrival_batch):
            gain_tag("gained-today", members[i : i + shape.arrival_batch])
            services.trigger_on_tag_gains()
    campaign.refresh_from_db()
    phases = set(Delivery.objects.filter(campaign=campaign).values_list("phase", flat=True))
    ids = list(Delivery.objects.filter(campaign=campaign).values_list("id", flat=True))
    services.deliver(delivery_ids=ids)
    return campaign, members, phases


def check_shape(shape: Shape, campaign: Campaign, members: list[Profile], gateway: Receiver) -> None:
    n = len(members)
    assignments = list(Assignment.objects.filter(campaign=campaign).values_list("profile_id", "role", "variant_id"))
    # Every member is in exactly one group.
    assert sorted(a[0] for a in assignments) == sorted(p.pk for p in members)
    variants = list(campaign.variants.order_by("position"))
    total = sum(shape.weights)
    holdout = [a for a in assignments if a[1] == "holdout"]
    pilot = [a for a in assignments if a[1] == "pilot"]
    tested = pilot if shape.pilot else [a for a in assignments if a[1] == "test"]
    assert abs(len(holdout) - n * shape.holdout / 100) <= 1
    assert abs(len(pilot) - n * shape.pilot / 100) <= 1
    if shape.kind.startswith("trigger"):
        # Arrivals: each group within one person of its share of everyone assigned so far.
        for v in variants:
            share = (1 - shape.holdout / 100) * v.weight / total
            assert abs(sum(1 for a in tested if a[2] == v.pk) - n * share) < 1
    else:
        # One cut: the variants split the tested group by weight.
        for v in variants:
            assert abs(sum(1 for a in tested if a[2] == v.pk) - len(tested) * v.weight / total) <= 1
    if shape.pilot:
        rest = [a for a in assignments if a[1] == "rollout"]
        assert len(rest) == n - len(holdout) - len(pilot) and all(a[2] is None for a in rest)
    # Every member of the phase outside the holdout gets exactly one message, and nobody else any.
    deliveries = list(Delivery.objects.filter(campaign=campaign).values_list("id", "profile_id", "status"))
    assert sorted(d[1] for d in deliveries) == sorted(a[0] for a in tested)
    assert {d[2] for d in deliveries} <= {"sent"}, {d[2] for d in deliveries}
    if shape.channel == ChannelKind.EMAIL:
        keys = [m.extra_headers["X-Idempotency-Key"] for m in mail.outbox]
        expected = {
            str(k) for k in Delivery.objects.filter(campaign=campaign).values_list("idempotency_key", flat=True)
        }
        assert sorted(keys) == sorted(expected)
    else:
        assert sorted(r["delivery_id"] for r in gateway.requests) == sorted(d[0] for d in deliveries)


@pytest.fixture
def gateway():
    with Receiver() as receiver:
        yield receiver


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(shape=shapes())
def test_every_drawn_shape_puts_each_member_in_one_group_and_messages_each_tested_member_once(shape, gateway):
    gateway.requests.clear()
    mail.outbox = []
    try:
        with transaction.atomic():
            campaign, members, _phases = send_shape(shape, gateway)
            check_shape(shape, campaign, members, gateway)
            raise _Rollback
    except _Rollback:
        pass


@pytest.mark.parametrize("kind", KINDS)
def test_one_variant_without_holdout_or_pilot_sends_to_everyone_once(kind, gateway):
    shape = Shape(weights=(100,), holdout=0, pilot=0, kind=kind, channel=ChannelKind.PUSH, audience=9)
    campaign, members, phases = send_shape(shape, gateway)
    check_shape(shape, campaign, members, gateway)
    assert len(gateway.requests) == 9
    assert {r["variant"] for r in gateway.requests} == {"V0"}
    assert Delivery.objects.filter(campaign=campaign, status="sent").count() == 9
    expected_phase = {"now": "full", "at": "full", "cron": "run:", "trigger_event": "trigger:", "trigger_tag": "tag:"}
    assert phases and all(p.startswith(expected_phase[kind]) for p in phases), phases
