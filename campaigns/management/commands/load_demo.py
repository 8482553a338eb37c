"""`manage.py load_demo`: a small synthetic world for the admin, loaded through the same services
the product's calls go through (identify, event ingestion), so profiles, identities and
first/last seen come out as in production. Safe to run twice."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta
from decimal import Decimal

from django.core.management.base import BaseCommand
from django.utils import timezone
from tqdm import tqdm

from profiles.models import Profile
from profiles.normalize import parse_traits
from profiles.services import catch_up_seen_times, identify
from tracking.services import ingest_events

CITIES = ["Shanghai", "Beijing", "Shenzhen", "Hangzhou", "Chengdu", "Wuhan"]
SOURCES = ["wechat", "douyin", "baidu", "weibo", "direct"]
BATCH = 1000


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
        events: list[dict] = []
        accepted = 0
        for i in tqdm(range(users), desc="demo users", unit="user", mininterval=1):
            user_id = f"demo-{i:06d}"
            signup = now - timedelta(days=rng.randint(0, days), minutes=rng.randint(0, 1440))
            phone = f"+86138{i:08d}"
            known, custom, _errors = parse_traits(
                {
                    "phone": phone,
                    "city": rng.choice(CITIES),
                    "timezone": "Asia/Shanghai",
                    "signup_at": signup.isoformat(),
                    "push_opt_in": rng.random() < 0.7,
                }
            )
            identify(user_id=user_id, identities=[("phone", phone)], traits=known, custom_traits=custom)
            events.extend(self._timeline(rng, user_id, signup, now))
            while len(events) >= BATCH:
                accepted += ingest_events(events=events[:BATCH]).accepted
                del events[:BATCH]
        if events:
            accepted += ingest_events(events=events).accepted
        # What the minutely beat job would do: the demo's profiles show their first/last seen at once.
        catch_up_seen_times(max_seconds=600)
        self.stdout.write(f"Loaded {users} demo users and {accepted} events over {days} days.")

    @staticmethod
    def _timeline(rng: random.Random, user_id: str, signup, now) -> list[dict]:
        source = rng.choice(SOURCES)

        def event(name: str, at, kind: str = "behavior", **properties) -> dict:
            return {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "name": name,
                "kind": kind,
                "timestamp": at.isoformat(),
                "user_id": user_id,
                "properties": properties,
                "context": {"utm_source": source},
            }

        timeline = [event("signup", signup)]
        t = signup
        while (t := t + timedelta(hours=rng.expovariate(1 / 60))) <= now:
            timeline.append(event("app_open", t))
            if rng.random() < 0.08:
                amount = Decimal(rng.randint(20, 800)).quantize(Decimal("0.01"))
                timeline.append(event("order_paid", t, "business", order_id=uuid.uuid4().hex[:12], amount=str(amount)))
        return timeline
