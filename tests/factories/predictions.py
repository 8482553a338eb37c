"""Factories for predictions: predicted-value tiers, and a shop's order history drawn from the
BG/NBD story (each customer buys at a rate of their own until they drop out), so the models have
something real to find."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import factory
import numpy as np

from predictions.models import PredictedTier
from profiles.models import Identity, IdentityKind, Profile
from tracking.models import Event, EventKind


class PredictedTierFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PredictedTier
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"predicted-{n}")
    name = factory.LazyAttribute(lambda t: t.slug.title())
    rank = 5
    min_value_percentile = 50


@dataclass(frozen=True)
class Shop:
    profiles: list[Profile]
    orders: int


def shop_history(*, customers: int, now: datetime, days: int = 540, seed: int = 7, prefix: str = "shopper") -> Shop:
    """`customers` profiles, each first buying at some day in the last `days`, then buying at a
    gamma-distributed daily rate until a geometric number of purchases ends their life; amounts
    gamma-distributed around a customer-specific mean. Written with bulk inserts."""
    rng = np.random.default_rng(seed)
    profiles = Profile.objects.bulk_create(
        [Profile(user_id=f"{prefix}-{i}", signup_at=now - timedelta(days=days + 1)) for i in range(customers)]
    )
    Identity.objects.bulk_create([Identity(profile=p, kind=IdentityKind.USER_ID, value=p.user_id) for p in profiles])
    events = []
    for profile in profiles:
        rate = rng.gamma(0.8, 1 / 25)  # purchases per day
        p_drop = rng.beta(1.0, 4.0)
        mean_amount = rng.gamma(4.0, 15.0)
        age = rng.uniform(30, days)
        t = 0.0
        while True:
            amount = max(1.0, rng.gamma(6.0, mean_amount / 6.0))
            events.append(
                Event(
                    event_id=uuid.uuid4(),
                    name="order_paid",
                    kind=EventKind.BUSINESS,
                    timestamp=now - timedelta(days=age - t),
                    user_id=profile.user_id,
                    properties={"order_id": f"{profile.user_id}-{len(events)}", "amount": f"{amount:.2f}"},
                )
            )
            if rng.random() < p_drop:
                break
            t += rng.exponential(1 / max(rate, 1e-3))
            if t >= age:
                break
    Event.objects.bulk_create(events, batch_size=2000)
    return Shop(profiles=profiles, orders=len(events))


def one_order(profile: Profile, *, at: datetime, amount: str = "20.00") -> Event:
    return Event.objects.create(
        event_id=uuid.uuid4(),
        name="order_paid",
        kind=EventKind.BUSINESS,
        timestamp=at,
        user_id=profile.user_id,
        properties={"order_id": f"o-{uuid.uuid4().hex[:12]}", "amount": amount},
    )
