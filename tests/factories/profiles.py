"""Factories for profiles, identities, tags and tag rules, and a helper that stores events the
way ingestion does (rows, then the ingestion listeners)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

import factory
from django.utils import timezone

from profiles.models import Identity, IdentityKind, Profile, ProfileTag, Tag, TagRule, TagRuleKind, TagSource
from profiles.services import record_ingested_events
from tracking.hooks import StoredEvent
from tracking.models import Event
from tracking.services import reserve_event_ids


class ProfileFactory(factory.django.DjangoModelFactory):
    """A profile with its `user_id` identity, as ingestion or identify would leave it."""

    class Meta:
        model = Profile
        skip_postgeneration_save = True

    user_id = factory.Sequence(lambda n: f"u{n:06d}")
    name = factory.Sequence(lambda n: f"Person {n}")
    city = "Shanghai"
    first_seen_at = factory.LazyFunction(lambda: timezone.now() - timedelta(days=30))
    last_seen_at = factory.LazyFunction(lambda: timezone.now() - timedelta(days=1))

    @factory.post_generation
    def user_identity(self, create: bool, extracted, **kwargs) -> None:
        if create:
            Identity.objects.get_or_create(kind=IdentityKind.USER_ID, value=self.user_id, defaults={"profile": self})


class IdentityFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Identity

    profile = factory.SubFactory(ProfileFactory)
    kind = IdentityKind.DEVICE
    value = factory.Sequence(lambda n: f"device-{n}")


class TagFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tag
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"tag-{n}")
    category = "interest"
    source = TagSource.MANUAL


class ProfileTagFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ProfileTag

    profile = factory.SubFactory(ProfileFactory)
    tag = factory.SubFactory(TagFactory)
    source = TagSource.MANUAL


class TagRuleFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TagRule

    name = factory.Sequence(lambda n: f"Rule {n}")
    kind = TagRuleKind.RULE
    tag_name = factory.Sequence(lambda n: f"rule-tag-{n}")
    tag_category = "behaviour"
    conditions = factory.LazyFunction(lambda: [{"event": "order_paid", "within_days": 30, "op": "gte", "count": 3}])


class PreferenceRuleFactory(TagRuleFactory):
    kind = TagRuleKind.PREFERENCE
    tag_name = ""
    conditions = factory.LazyFunction(list)
    event_name = "article_read"
    category_property = "category"
    window_days = 30
    min_count = 5
    p_value_threshold = 0.01
    tag_prefix = "prefers_"
    tag_category = "preference"


def ingest(rows: Iterable[dict]) -> list[Event]:
    """Store events (dicts of Event fields; `timestamp` defaults to an hour ago) and run the
    profiles ingestion listener over them, as `POST /api/v1/events` does through
    `tracking.hooks.notify_ingested` (called directly, so other apps' listeners stay out of the
    profiles tests)."""
    now = timezone.now()
    rows = list(rows)
    ids = reserve_event_ids(count=len(rows))  # consecutive, as a batch stored by ingestion
    events = Event.objects.bulk_create(
        [
            Event(
                id=pk,
                event_id=row.get("event_id") or uuid.uuid4(),
                name=row.get("name", "app_open"),
                timestamp=row.get("timestamp") or now - timedelta(hours=1),
                user_id=row.get("user_id"),
                anonymous_id=row.get("anonymous_id"),
                properties=row.get("properties") or {},
            )
            for pk, row in zip(ids, rows, strict=True)
        ]
    )
    record_ingested_events(
        events=[
            StoredEvent(
                id=e.id,
                event_id=str(e.event_id),
                name=e.name,
                kind=e.kind,
                timestamp=e.timestamp,
                user_id=e.user_id,
                anonymous_id=e.anonymous_id,
                properties=e.properties,
            )
            for e in events
        ]
    )
    return events


def bulk_events(rows: Iterable[tuple[str, str, datetime, dict]]) -> None:
    """Store many (user_id, name, timestamp, properties) events without running listeners, for
    analytics tests that need volume; their profiles must exist already."""
    Event.objects.bulk_create(
        [Event(event_id=uuid.uuid4(), user_id=u, name=n, timestamp=t, properties=p) for u, n, t, p in rows],
        batch_size=2000,
    )
