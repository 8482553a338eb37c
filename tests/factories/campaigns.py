"""Factories for segments, campaigns, variants and channels, and helpers that build audiences
and events in bulk (the campaign tests need hundreds of people, not a handful)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal

import factory
from django.utils import timezone

from campaigns.models import Campaign, Channel, ChannelKind, Segment, Variant
from profiles.models import Identity, IdentityKind, Profile, ProfileTag, Tag
from tracking.models import Event


class SegmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Segment

    name = factory.Sequence(lambda n: f"segment {n}")
    definition = factory.LazyFunction(lambda: {"tag": "campaign-test"})


class CampaignFactory(factory.django.DjangoModelFactory):
    """A draft campaign; `variants=[("A", 50), ("B", 50)]` (the default) creates its variants."""

    class Meta:
        model = Campaign
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"campaign {n}")
    segment = factory.SubFactory(SegmentFactory)
    channel = ChannelKind.PUSH
    goal_event = "order_paid"
    attribution_hours = 72
    holdout_percent = Decimal(10)
    pilot_percent = Decimal(0)
    frequency_cap_per_day = 0
    respect_quiet_hours = False
    min_sample = 0

    @factory.post_generation
    def variants(self, create: bool, extracted, **kwargs) -> None:
        if not create:
            return
        for i, (name, weight) in enumerate(extracted or [("A", 50), ("B", 50)]):
            Variant.objects.create(
                campaign=self,
                name=name,
                weight=weight,
                position=i,
                title=f"Title {name}",
                body=f"Body {name}",
                url=f"https://shop.example.com/{name.lower()}",
            )


class VariantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Variant

    campaign = factory.SubFactory(CampaignFactory, variants=[])
    name = factory.Sequence(lambda n: f"V{n}")
    weight = 50
    title = "Hello"
    body = "A message"


class ChannelFactory(factory.django.DjangoModelFactory):
    """The channel's configuration row, replacing the one the migration created."""

    class Meta:
        model = Channel

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        kind = kwargs.pop("kind")
        channel, _ = model_class.objects.update_or_create(kind=kind, defaults=kwargs)
        return channel

    kind = ChannelKind.PUSH
    url = ""
    timeout_seconds = 2.0
    max_attempts = 5
    backoff_base_seconds = 0.2
    backoff_max_seconds = 1.0


def make_profiles(count: int, *, prefix: str = "p", tag: str | None = "campaign-test", **fields) -> list[Profile]:
    """`count` profiles with their user_id identities (push opt-in by default), tagged `tag`."""
    fields.setdefault("push_opt_in", True)
    profiles = Profile.objects.bulk_create(
        [Profile(user_id=f"{prefix}{i:05d}", **fields) for i in range(count)], batch_size=2000
    )
    Identity.objects.bulk_create(
        [Identity(profile=p, kind=IdentityKind.USER_ID, value=p.user_id) for p in profiles], batch_size=2000
    )
    if tag:
        tag_row, _ = Tag.objects.get_or_create(name=tag)
        ProfileTag.objects.bulk_create([ProfileTag(profile=p, tag=tag_row) for p in profiles], batch_size=2000)
    return profiles


def add_events(rows: Iterable[tuple[str, str, datetime]], properties: dict | None = None) -> None:
    """Store `(user_id, event name, timestamp)` events directly (analysis reads the table)."""
    Event.objects.bulk_create(
        [
            Event(
                event_id=uuid.uuid4(),
                name=name,
                timestamp=ts,
                received_at=timezone.now(),
                user_id=user_id,
                properties=properties or {},
            )
            for user_id, name, ts in rows
        ],
        batch_size=2000,
    )


def gain_tag(tag_name: str, profiles: Iterable[Profile], *, ago: timedelta | None = None) -> int:
    """Give `profiles` the tag as the profiles app does (recording the gains as tag changes);
    with `ago`, the gains are dated that long before now (a gain the sweeper has not seen yet)."""
    from profiles import services as profile_services
    from profiles.models import TagChange

    ids = [p.pk for p in profiles]
    before = TagChange.objects.order_by("-id").values_list("id", flat=True).first() or 0
    gained = profile_services.tag_profiles(tag_name=tag_name, profile_ids=ids, source="rule")
    if ago is not None:
        TagChange.objects.filter(id__gt=before, profile_id__in=ids).update(at=timezone.now() - ago)
    return gained


def campaign_admin_form(segment, **extra) -> dict:
    """The campaign add form of the admin, as posted: one push variant, monthly; `extra` overrides."""
    return {
        "name": "Monthly",
        "segment": segment.pk,
        "channel": "push",
        "goal_event": "order_paid",
        "attribution_hours": 72,
        "holdout_percent": "10",
        "pilot_percent": "0",
        "alpha": "0.05",
        "min_sample": 100,
        "schedule_kind": "cron",
        "cron": "0 9 1 * *",
        "delay_minutes": 0,
        "frequency_cap_per_day": 1,
        "quiet_start_hour": 21,
        "quiet_end_hour": 8,
        "variants-TOTAL_FORMS": 1,
        "variants-INITIAL_FORMS": 0,
        "variants-MIN_NUM_FORMS": 1,
        "variants-MAX_NUM_FORMS": 1000,
        "variants-0-position": 0,
        "variants-0-name": "A",
        "variants-0-weight": 50,
        "variants-0-title": "Hi",
        "variants-0-body": "Hello",
        **extra,
    }
