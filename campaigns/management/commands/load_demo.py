"""`manage.py load_demo`: a small synthetic world for the admin. Safe to run twice."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta
from decimal import Decimal

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone
from tqdm import tqdm

from profiles.models import Identity, IdentityKind, Profile
from tracking.models import Event, EventKind

CITIES = ["Shanghai", "Beijing", "Shenzhen", "Hangzhou", "Chengdu", "Wuhan"]
SOURCES = ["wechat", "douyin", "baidu", "weibo", "direct"]


class Command(BaseCommand):
    help = "Load demo profiles and events (skips what is already there)."

    def add_arguments(self, parser):
        parser.add_argument("--users", type=int, default=2000)
        parser.add_argument("--days", type=int, default=90)
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args, users: int, days: int, seed: int, **options):
        if Profile.objects.filter(user_id__startswith="demo-").exists():
            self.stdout.write("Demo data already loaded; nothing to do.")
            return
        rng = random.Random(seed)
        now = timezone.now()
        with transaction.atomic():
            for start in tqdm(range(0, users, 500), desc="demo users", unit="batch"):
                self._load_batch(rng, now, range(start, min(start + 500, users)), days)
        self.stdout.write(f"Loaded {users} demo users over {days} days.")

    def _load_batch(self, rng: random.Random, now, ids: range, days: int) -> None:
        profiles, identities, events = [], [], []
        for i in ids:
            user_id = f"demo-{i:06d}"
            signup = now - timedelta(days=rng.randint(0, days), minutes=rng.randint(0, 1440))
            profiles.append(
                Profile(
                    user_id=user_id,
                    city=rng.choice(CITIES),
                    signup_at=signup,
                    first_seen_at=signup,
                    last_seen_at=signup,
                    push_opt_in=rng.random() < 0.7,
                    phone=f"+86138{i:08d}",
                    timezone="Asia/Shanghai",
                )
            )
            source = rng.choice(SOURCES)
            events.append(
                Event(
                    event_id=uuid.uuid4(),
                    name="signup",
                    kind=EventKind.BEHAVIOR,
                    timestamp=signup,
                    user_id=user_id,
                    utm_source=source,
                )
            )
            t = signup
            while True:
                t += timedelta(hours=rng.expovariate(1 / 60))
                if t > now:
                    break
                events.append(
                    Event(event_id=uuid.uuid4(), name="app_open", timestamp=t, user_id=user_id, utm_source=source)
                )
                if rng.random() < 0.08:
                    amount = Decimal(rng.randint(20, 800)).quantize(Decimal("0.01"))
                    events.append(
                        Event(
                            event_id=uuid.uuid4(),
                            name="order_paid",
                            kind=EventKind.BUSINESS,
                            timestamp=t,
                            user_id=user_id,
                            properties={"order_id": uuid.uuid4().hex[:12], "amount": str(amount)},
                        )
                    )
        Profile.objects.bulk_create(profiles)
        by_user = {p.user_id: p for p in Profile.objects.filter(user_id__in=[p.user_id for p in profiles])}
        identities = [Identity(profile=p, kind=IdentityKind.USER_ID, value=u) for u, p in by_user.items()]
        identities += [Identity(profile=p, kind=IdentityKind.PHONE, value=p.phone) for p in by_user.values()]
        Identity.objects.bulk_create(identities)
        Event.objects.bulk_create(events, batch_size=5000)
