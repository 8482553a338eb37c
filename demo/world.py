"""The demo: a synthetic shop's world and one full turn of the operations loop, run through the
product's own paths so that what an operator sees afterwards was made the way production makes it.

The world: users identified through `identify` (phone, city, push consent) with 90 days of
behaviour (app opens, product views by category, orders) from several traffic sources, ingested
through event ingestion.

The loop, every step on the real Celery worker that `make up` starts:
preference and rule tags recomputed -> RFM value tiers recomputed -> a coupon rule for the core
(important-value) tier, issued to that tier by an issuance job and partly redeemed -> an A/B push
campaign with a holdout and a pilot, delivered by the workers to the demo gateway
(`demo.gateway`) -> simulated recipients react to what reached them according to hidden
true rates per variant: the provider's delivery receipts go to `POST /api/v1/deliveries/receipts`
and their orders to `POST /api/v1/events`, so attribution works as in production -> the results
name the winner -> the winner is rolled out to the rest -> the sweeper completes the campaign ->
the next iteration is cloned, the winner as its control.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import OperationalError, connections
from django.utils import timezone
from tqdm import tqdm

from profiles.normalize import parse_traits
from profiles.services import catch_up_seen_times, identify
from tracking.services import ingest_events

USER_PREFIX = "demo-"
CITIES = ["Shanghai", "Beijing", "Shenzhen", "Hangzhou", "Chengdu", "Wuhan"]
# Traffic sources (utm_source) with their share of sign-ups.
SOURCES = {"wechat": 35, "douyin": 25, "baidu": 15, "weibo": 10, "direct": 15}
# Categories with the price range of an order in them.
CATEGORIES = {
    "apparel": (60, 400),
    "beauty": (40, 300),
    "electronics": (200, 2000),
    "home": (50, 600),
    "food": (20, 150),
    "sports": (80, 700),
    "books": (20, 120),
}
# What people search for, with the most results a query finds (0: it finds nothing, a typo or
# something the shop does not sell).
SEARCHES = [
    ("dress", 40),
    ("lipstick", 30),
    ("phone", 25),
    ("earbuds", 20),
    ("sofa", 12),
    ("coffee", 35),
    ("running shoes", 18),
    ("novel", 50),
    ("yoga mat", 10),
    ("electornics", 0),
    ("bluetooth earbds", 0),
    ("drone", 0),
    ("camping tent", 0),
]
BATCH = 1000
CHUNK = 250

CAMPAIGN_NAME = "Demo: come back this week"
FUNNEL_NAME = "Demo: open, view, pay"
TAG_RULES = ("Demo: favourite categories", "Demo: frequent buyers")
COUPON_RULE_NAME = "Demo: core customers, 30 off 200"
COUPON_TIER = "core"  # the tier of the RFM "important value" customers
CUSTOMER_TIERS = ["core", "important", "ordinary"]


@dataclass(frozen=True)
class TrueRates:
    """How recipients really behave: hidden from the product, which has to find it out."""

    delivered: float
    opened: float
    clicked: float
    converted: float


# Far enough apart that a pilot of a hundred and fifty people names B the winner on always-valid
# evidence, against the holdout and A (`--users 600`).
HIDDEN_RATES = {
    "holdout": TrueRates(delivered=0.0, opened=0.0, clicked=0.0, converted=0.03),
    "A": TrueRates(delivered=0.97, opened=0.35, clicked=0.12, converted=0.08),
    "B": TrueRates(delivered=0.97, opened=0.50, clicked=0.26, converted=0.30),
}
COUPON_REDEEM_RATE = 0.3
COUPON_WAVE = 1000


class DemoError(Exception):
    """A step of the demo could not run; the message says what to do."""


# --- the world ---------------------------------------------------------------------------------


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def amount_of(rng: random.Random, category: str) -> Decimal:
    low, high = CATEGORIES[category]
    return Decimal(rng.randint(low, high)).quantize(Decimal("0.01"))


def demo_user(
    *, seed: int, index: int, days: int, now: datetime, signup_days: int | None = None
) -> tuple[dict[str, Any], list[dict]]:
    """One user's `identify` call and event timeline. Each user has their own random stream, so
    the world is the same however it is split between processes.

    People signed up over `signup_days` (more than a year by default, so lifecycle stages and
    tiers look like a shop's, not like a shop that opened last month); their activity is written
    for the last `days` only (the signup itself, and the first order with it, whenever it was).
    Some of those who signed up before that window have drifted away: they stop coming at some
    point, so silent and churned customers exist too."""
    rng = random.Random(seed * 1_000_003 + index)
    user_id = f"{USER_PREFIX}{index:06d}"
    signup = now - timedelta(days=rng.uniform(0, max(days, signup_days or days)))
    window_start = now - timedelta(days=days)
    lapse_rng = random.Random(seed * 3_000_003 + index)
    stops = now
    if signup < window_start and lapse_rng.random() < 0.3:
        stops = now - timedelta(days=lapse_rng.uniform(0, days * 1.5))
    phone = f"+86138{index:08d}"
    known, custom, _errors = parse_traits(
        {
            "phone": phone,
            "city": rng.choice(CITIES),
            "timezone": "Asia/Shanghai",
            "signup_at": signup.isoformat(),
            "push_opt_in": rng.random() < 0.85,
        }
    )
    call = {"user_id": user_id, "identities": [("phone", phone)], "traits": known, "custom_traits": custom}
    source = rng.choices(list(SOURCES), weights=list(SOURCES.values()))[0]
    # How active the person is drives how often they come, buy and how much: recency, frequency
    # and money move together, as they do in real shops, so the RFM tiers are meaningful.
    activity = rng.lognormvariate(0, 0.7)
    gap_hours = 110 / activity
    order_chance = min(0.5, 0.1 * activity)
    names = list(CATEGORIES)
    weights = [1.0] * len(names)
    if rng.random() < 0.7:  # most people have a favourite category or two
        for k, boost in zip(rng.sample(range(len(names)), 2), (8.0, 3.0), strict=True):
            weights[k] = boost

    def event(name: str, at: datetime, kind: str = "behavior", **properties: Any) -> dict:
        return {
            "event_id": random_uuid(rng),
            "name": name,
            "kind": kind,
            "timestamp": at.isoformat(),
            "user_id": user_id,
            "properties": properties,
            "context": {"utm_source": source},
        }

    timeline = [event("signup", signup)]
    if rng.random() < 0.6:  # most sign up to buy something
        category = rng.choices(names, weights=weights)[0]
        timeline.append(event("product_view", signup, category=category))
        timeline.append(
            event(
                "order_paid",
                signup + timedelta(minutes=10),
                "business",
                order_id=random_uuid(rng)[:12],
                amount=str(amount_of(rng, category)),
                category=category,
            )
        )
    # Searches come from a stream of their own, so the rest of the world is the same with or
    # without them.
    search_rng = random.Random(seed * 2_000_003 + index)

    def search(at: datetime) -> dict:
        query, results = search_rng.choice(SEARCHES)
        found = 0 if results == 0 else search_rng.randint(1, results)
        return {**event("search", at, query=query, results=found), "event_id": random_uuid(search_rng)}

    t = max(signup, window_start)
    while (t := t + timedelta(hours=rng.expovariate(1 / gap_hours))) <= stops:
        timeline.append(event("app_open", t))
        if search_rng.random() < 0.25:
            timeline.append(search(t))
        viewed = rng.choices(names, weights=weights, k=rng.choice((0, 1, 1, 2)))
        for category in viewed:
            timeline.append(event("product_view", t, category=category))
        if viewed and rng.random() < order_chance:
            category = viewed[0]
            timeline.append(
                event(
                    "order_paid",
                    t + timedelta(minutes=5),
                    "business",
                    order_id=random_uuid(rng)[:12],
                    amount=str(amount_of(rng, category)),
                    category=category,
                )
            )
    return call, [e for e in timeline if e["timestamp"] <= now.isoformat()]


def _ingest(events: list[dict]) -> int:
    # Replaying a batch is harmless (event ids are idempotent), so a deadlock with a concurrent
    # loader process is simply retried.
    for attempt in range(3):
        try:
            return ingest_events(events=events).accepted
        except OperationalError:
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))
    return 0


def load_users(
    first: int, last: int, seed: int, days: int, now: datetime, signup_days: int | None = None
) -> tuple[int, int]:
    """Identify users `first`..`last-1` and ingest their events; (users, events accepted)."""
    # One identify is one transaction: waiting for each commit to reach the disk would make the
    # load I/O-bound. Synthetic data lost to a crash is simply loaded again, so this session
    # (only) does not wait.
    with connections["default"].cursor() as cursor:
        cursor.execute("SET synchronous_commit TO off")
    accepted, pending = 0, []
    try:
        for index in range(first, last):
            call, events = demo_user(seed=seed, index=index, days=days, now=now, signup_days=signup_days)
            identify(**call)
            pending.extend(events)
            while len(pending) >= BATCH:
                accepted += _ingest(pending[:BATCH])
                del pending[:BATCH]
        if pending:
            accepted += _ingest(pending)
    finally:
        with connections["default"].cursor() as cursor:
            cursor.execute("SET synchronous_commit TO DEFAULT")
    return last - first, accepted


def _load_chunk(args: tuple[int, int, int, int, datetime, int | None]) -> tuple[int, int]:
    return load_users(*args)


def load_world(
    *,
    users: int,
    days: int,
    seed: int,
    jobs: int,
    progress: bool,
    now: datetime | None = None,
    signup_days: int | None = None,
) -> tuple[int, int]:
    """The demo users and their events, in `jobs` processes; (users, events accepted)."""
    now = now or timezone.now()
    chunks = [(start, min(users, start + CHUNK), seed, days, now, signup_days) for start in range(0, users, CHUNK)]
    bar = tqdm(total=users, desc="demo users", unit="user", mininterval=1, disable=not progress)
    loaded = accepted = 0
    try:
        if jobs <= 1 or len(chunks) == 1:
            results: Iterator[tuple[int, int]] = map(_load_chunk, chunks)
            for n, a in results:
                loaded, accepted = loaded + n, accepted + a
                bar.update(n)
        else:
            import multiprocessing

            # Forked children open their own database connections; the parent's must not be shared.
            connections.close_all()
            with multiprocessing.get_context("fork").Pool(jobs) as pool:
                for n, a in pool.imap_unordered(_load_chunk, chunks):
                    loaded, accepted = loaded + n, accepted + a
                    bar.update(n)
    finally:
        bar.close()
    # What the minutely beat job would do: the demo's profiles show their first/last seen at once.
    catch_up_seen_times(max_seconds=600)
    # A bulk load leaves the planner without statistics until autovacuum comes round; the
    # loop's segment and results queries right after would be planned blind.
    with connections["default"].cursor() as cursor:
        cursor.execute("ANALYZE")
    return loaded, accepted


# The nightly value recompute, replayed over the history: one run per this many days.
HISTORY_STEP_DAYS = 30


def recompute_tier_history(*, days: int, now: datetime | None = None) -> list[datetime]:
    """The RFM values as the nightly job would have left them over the activity window: a
    recompute (`crm.services.recompute_customer_values`) every HISTORY_STEP_DAYS, oldest first,
    each seeing only the events before its date and recording its tier and stage changes at that
    date; then one now. The tier movement page then has months to compare. Returns the dates."""
    from crm import services as crm_services

    now = now or timezone.now()
    crm_services.ensure_default_setup()
    dates = [now - timedelta(days=k * HISTORY_STEP_DAYS) for k in range(days // HISTORY_STEP_DAYS, 0, -1)] + [now]
    for at in dates:
        crm_services.recompute_customer_values(now=at)
    return dates
