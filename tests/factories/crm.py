"""Factories for customer value: customers (profile + user_id identity), their orders as events,
scoring schemes, tiers and account managers."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import factory
from django.utils import timezone

from crm.models import AccountManager, ScoringScheme, ValueTier
from profiles.models import Identity, IdentityKind, Profile
from tests.factories.access import UserFactory
from tracking.models import Event, EventKind


class CustomerFactory(factory.django.DjangoModelFactory):
    """A profile with its `user_id` identity, so its events resolve to it."""

    class Meta:
        model = Profile
        skip_postgeneration_save = True

    user_id = factory.Sequence(lambda n: f"customer-{n}")
    signup_at = factory.LazyFunction(lambda: timezone.now() - timedelta(days=400))
    first_seen_at = factory.SelfAttribute("signup_at")
    last_seen_at = factory.LazyFunction(lambda: timezone.now() - timedelta(days=1))

    @factory.post_generation
    def identity(obj, create, extracted, **kwargs):
        if create:
            Identity.objects.create(profile=obj, kind=IdentityKind.USER_ID, value=obj.user_id)


def paid_order(
    profile: Profile,
    amount: str | Decimal,
    at: datetime,
    order_id: str | None = None,
) -> Event:
    return Event.objects.create(
        event_id=uuid.uuid4(),
        name="order_paid",
        kind=EventKind.BUSINESS,
        timestamp=at,
        user_id=profile.user_id,
        properties={"order_id": order_id or f"o-{uuid.uuid4().hex[:12]}", "amount": str(amount)},
    )


def refund(profile: Profile, order_id: str, at: datetime) -> Event:
    return Event.objects.create(
        event_id=uuid.uuid4(),
        name="order_refunded",
        kind=EventKind.BUSINESS,
        timestamp=at,
        user_id=profile.user_id,
        properties={"order_id": order_id},
    )


class ScoringSchemeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ScoringScheme

    name = factory.Sequence(lambda n: f"scheme-{n}")
    is_active = False


class ValueTierFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ValueTier
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"tier-{n}")
    name = factory.LazyAttribute(lambda t: t.slug.title())
    rank = 50


class AccountManagerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AccountManager

    user = factory.SubFactory(UserFactory, is_staff=True)
    capacity = 10
    is_active = True
