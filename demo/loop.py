"""One full turn of the operations loop on the demo world (see `demo.world` for the world and the
steps), every step on the real Celery worker that `make up` starts."""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import requests
from django.db.models import Count
from django.utils import timezone
from tqdm import tqdm

from demo.world import (
    BATCH,
    CAMPAIGN_NAME,
    CATEGORIES,
    COUPON_REDEEM_RATE,
    COUPON_RULE_NAME,
    COUPON_TIER,
    COUPON_WAVE,
    CUSTOMER_TIERS,
    FUNNEL_NAME,
    HIDDEN_RATES,
    TAG_RULES,
    USER_PREFIX,
    DemoError,
    amount_of,
    random_uuid,
)


class DemoLoop:
    """One full turn of the loop. `say` prints a line for the operator."""

    def __init__(
        self,
        *,
        api_url: str,
        gateway_url: str,
        seed: int,
        timeout: float,
        progress: bool,
        say: Callable[[str], None],
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.gateway_url = gateway_url.rstrip("/")
        self.seed = seed
        self.rng = random.Random(seed + 17)
        self.timeout = timeout
        self.progress = progress
        self.say = say
        self.http = requests.Session()
        self.api_key = ""
        self.gateway_cursor = 0

    # -- preflight ------------------------------------------------------------------------------

    def check_services(self) -> None:
        """The demo gateway and the web API must answer before anything is loaded."""
        checks = (("the demo gateway", f"{self.gateway_url}/health"), ("the web API", f"{self.api_url}/healthz"))
        for what, url in checks:
            try:
                self.http.get(url, timeout=5)
            except requests.RequestException as exc:
                raise DemoError(
                    f"{what} does not answer at {url} ({exc.__class__.__name__}). `make demo` starts it;"
                    " by hand see --api-url / --gateway-url."
                ) from None

    def wait_for_worker(self, timeout: float) -> None:
        from config.celery import app

        started = time.monotonic()
        bar = tqdm(total=int(timeout), desc="waiting for a Celery worker", unit="s", disable=not self.progress)
        try:
            while True:
                try:
                    # Expiring: pings nobody answered are dropped, not run by a worker started later.
                    if app.send_task("config.celery.ping", expires=10).get(timeout=2) == "pong":
                        return
                except Exception as exc:  # no answer yet (Celery's TimeoutError, or the broker is down)
                    bar.set_postfix_str(exc.__class__.__name__)
                waited = time.monotonic() - started
                bar.n = min(int(waited), bar.total)
                bar.refresh()
                if waited >= timeout:
                    raise DemoError(
                        f"No Celery worker answered within {timeout:.0f} s. The demo's loop runs on the worker:"
                        " start it with `make up` (or `DJANGO_SETTINGS_MODULE=config.settings.development"
                        " .venv/bin/celery -A config worker -Q"
                        " default,deliveries,analytics`), then run `manage.py load_demo` again."
                    )
        finally:
            bar.close()

    def indicators(self) -> None:
        """The indicator rollups folded on the worker, a funnel to analyse, and goals for this
        quarter set a little above what the shop does now, so the dashboards have something to show."""
        from indicators import services as indicator_services
        from indicators import tasks
        from indicators.models import Funnel, FunnelStep, Goal, GoalPeriod
        from indicators.registry import daily_values
        from indicators.selectors import goal_progress

        funnel, created = Funnel.objects.get_or_create(
            name=FUNNEL_NAME,
            defaults={"description": "Open the app, view a product, pay: within a day.", "window_hours": 24},
        )
        if created:
            for position, name in enumerate(("app_open", "product_view", "order_paid"), start=1):
                FunnelStep.objects.create(funnel=funnel, position=position, event_name=name)
        result = self._on_worker(tasks.rollup_indicators.delay(), "The indicator rollup")
        self.say(f"Indicators: {result['events']} events folded on the worker into {result['days']} days.")

        today = timezone.now().date()
        quarter = (today.month - 1) // 3 + 1
        q_start = date(today.year, 3 * quarter - 2, 1)
        q_end = date(today.year + (quarter == 4), 1 if quarter == 4 else 3 * quarter + 1, 1) - timedelta(days=1)
        so_far = sum(v for _d, v in daily_values("revenue", start=q_start, end=today))
        last_30 = [v for _d, v in daily_values("revenue", start=today - timedelta(days=29), end=today)]
        recent_dau = [v for _d, v in daily_values("dau", start=today - timedelta(days=29), end=today)]
        # Targets the pace shown on the goal page can reach: the quarter so far plus the last 30
        # days' daily pace for the days left, a little under (a goal nobody can reach teaches
        # operators to ignore goals).
        projected = so_far + sum(last_30) / len(last_30) * (q_end - today).days
        targets = {
            "revenue": (f"Revenue {today.year} Q{quarter}", (projected * Decimal("0.97")).quantize(Decimal("1"))),
            "dau": (
                f"DAU {today.year} Q{quarter}",
                (sum(recent_dau) / len(recent_dau) * Decimal("0.97")).quantize(Decimal("1")),
            ),
        }
        for key, (name, target) in targets.items():
            exists = Goal.objects.filter(indicator=key, period=GoalPeriod.QUARTER, year=today.year, quarter=quarter)
            if target > 0 and not exists.exists():
                goal = indicator_services.create_goal(
                    name=name, indicator=key, period=GoalPeriod.QUARTER, year=today.year, quarter=quarter, target=target
                )
                # The months share the target by their weights: lower it until no month so far
                # falls short of its share, so the goal page shows a pace that reaches it.
                months = goal_progress(goal).months
                shares = [m.actual / m.expected for m in months if m.actual is not None and m.expected]
                if shares and min(shares) < 1:
                    target = (target * min(shares) * Decimal("0.97")).quantize(Decimal("1"))
                    goal = indicator_services.redecompose_goal(
                        goal=goal, profile=goal.profile, weights=goal.weights or None, target=target
                    )
                self.say(f"Goal: {name} = {target:,} ({goal_progress(goal).status.replace('_', ' ')})")

    def community(self) -> None:
        """Operators with accounts and groups, and the community events of the demo's people (sent
        through ingestion), then last month's and this month's contribution scores, so the funnel,
        group health, competitor and ranking pages have numbers at first login."""
        from community.services import compute_contribution_scores, first_of_month, seed_demo_community
        from profiles.models import Profile

        user_ids = list(
            Profile.objects.filter(user_id__startswith=USER_PREFIX, merged_into__isnull=True)
            .order_by("user_id")
            .values_list("user_id", flat=True)
        )
        now = timezone.now()
        seeded = seed_demo_community(user_ids=user_ids, now=now, seed=self.seed)
        this_month = first_of_month(now)
        for month in (first_of_month(this_month - timedelta(days=1)), this_month):
            compute_contribution_scores(month=month, now=now)
        self.say(
            f"Community: {len(seeded.operators)} operators in {len(seeded.teams)} teams, {len(seeded.groups)} groups,"
            f" {seeded.events} community events; contribution scores for {this_month:%Y-%m} and the month before."
        )

    def plan(self) -> None:
        """The revenue goal's plan (two tactics, phases, three tasks per community team: done, doing,
        late) and one injected anomaly in the history, so the goal, review, board and alert pages
        have content at first login."""
        from django.contrib.auth.models import Group

        from campaigns.models import Campaign
        from coupons.models import CouponRule
        from indicators.models import Goal
        from planning.services import seed_demo_anomaly, seed_demo_plan

        goal = Goal.objects.filter(indicator="revenue").order_by("-year", "-quarter").first()
        teams = list(Group.objects.filter(name__startswith="Community team").order_by("name"))
        if goal is None or not teams:
            self.say("Plan: no revenue goal or no teams to plan with; skipped.")
            return
        owners = {team.pk: team.user_set.order_by("username").first() for team in teams}
        plan = seed_demo_plan(
            goal=goal,
            teams=teams,
            owners={pk: user for pk, user in owners.items() if user is not None},
            campaigns=list(Campaign.objects.filter(name=CAMPAIGN_NAME)),
            coupon_rules=list(CouponRule.objects.filter(name=COUPON_RULE_NAME)),
        )
        alert = seed_demo_anomaly(day=timezone.now().date() - timedelta(days=3))
        self.say(
            f"Plan: {goal.name} with {len(plan.get('tactics', []))} tactics and team tasks;"
            f" injected anomaly {'alerted' if alert else 'not checked (history too short)'}."
        )

    # -- helpers --------------------------------------------------------------------------------

    def _on_worker(self, result: Any, what: str) -> Any:
        from celery.exceptions import TimeoutError as CeleryTimeout

        try:
            return result.get(timeout=self.timeout)
        except CeleryTimeout:
            raise DemoError(f"{what} did not finish on the worker within {self.timeout:.0f} s.") from None
        except Exception as exc:  # the task failed on the worker; its error comes back here
            raise DemoError(f"{what} failed on the worker: {exc!r} (see the worker's log)") from None

    def _wait(self, what: str, done: Callable[[], tuple[int, int]], unit: str = "step") -> None:
        """Poll `done() -> (finished, total)` with a progress bar until finished == total."""
        deadline = time.monotonic() + self.timeout
        finished, total = done()
        bar = tqdm(total=total, desc=what, unit=unit, mininterval=0.5, disable=not self.progress)
        try:
            while True:
                finished, total = done()
                bar.total = total
                bar.n = finished
                bar.refresh()
                if finished >= total:
                    return
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"{what}: {finished} of {total} after {self.timeout:.0f} s; is the worker consuming"
                        " the deliveries queue? See .run/worker.log."
                    )
                time.sleep(0.5)
        finally:
            bar.close()

    def _post(self, path: str, body: dict) -> dict:
        response = self.http.post(
            f"{self.api_url}{path}", json=body, headers={"Authorization": f"Api-Key {self.api_key}"}, timeout=60
        )
        if response.status_code != 200:
            raise DemoError(f"POST {path} answered {response.status_code}: {response.text[:300]}")
        return response.json()

    def _post_events(self, events: list[dict]) -> int:
        accepted = 0
        for start in range(0, len(events), BATCH):
            accepted += self._post("/api/v1/events", {"events": events[start : start + BATCH]})["accepted"]
        return accepted

    def _post_receipts(self, receipts: list[dict]) -> int:
        accepted = 0
        for start in range(0, len(receipts), BATCH):
            accepted += self._post("/api/v1/deliveries/receipts", {"receipts": receipts[start : start + BATCH]})[
                "accepted"
            ]
        return accepted

    def _chance(self, user_id: str, what: str) -> float:
        """A uniform draw fixed by (seed, person, what): the same person reacts the same way
        whichever worker thread happened to send first."""
        digest = hashlib.sha256(f"{self.seed}:{user_id}:{what}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def _order(self, user_id: str, at: datetime, **extra: Any) -> dict:
        category = self.rng.choice(list(CATEGORIES))
        return {
            "event_id": random_uuid(self.rng),
            "name": "order_paid",
            "kind": "business",
            "timestamp": at.isoformat(),
            "user_id": user_id,
            "properties": {
                "order_id": random_uuid(self.rng)[:12],
                "amount": str(amount_of(self.rng, category)),
                "category": category,
                **extra,
            },
            "context": {"utm_source": "push"},
        }

    # -- steps ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from access.services import create_api_key

        # Key names are unique; a loop started again after a failure gets a key of its own.
        name = f"Demo devices and gateway callbacks {timezone.now():%Y-%m-%d %H:%M:%S}"
        self.api_key = create_api_key(name=name, scopes=["events:write"]).plaintext
        # The gateway outlives databases: only what it receives from now on belongs to this loop.
        self.gateway_cursor = self.http.get(f"{self.gateway_url}/health", timeout=10).json()["received"]
        for step in (self.tags, self.tiers, self.coupons):
            started = time.monotonic()
            step()
            self.say(f"  ({time.monotonic() - started:.1f} s)")
        started = time.monotonic()
        outcome = self.campaign()
        self.say(f"  ({time.monotonic() - started:.1f} s)")
        # Community events before the indicators: the rollups then fold them too.
        started = time.monotonic()
        self.community()
        self.say(f"  ({time.monotonic() - started:.1f} s)")
        started = time.monotonic()
        self.indicators()
        self.say(f"  ({time.monotonic() - started:.1f} s)")
        started = time.monotonic()
        self.plan()
        self.say(f"  ({time.monotonic() - started:.1f} s)")
        return outcome

    def tags(self) -> None:
        from profiles import tasks
        from profiles.models import TagRule, TagRuleKind

        preference, _ = TagRule.objects.get_or_create(
            name=TAG_RULES[0],
            defaults={
                "kind": TagRuleKind.PREFERENCE,
                "description": "Who views one category significantly more often than shoppers do overall.",
                "event_name": "product_view",
                "category_property": "category",
                "window_days": 90,
                "min_count": 4,
                "p_value_threshold": 0.01,
                "tag_prefix": "prefers_",
                "tag_category": "preference",
            },
        )
        frequent, _ = TagRule.objects.get_or_create(
            name=TAG_RULES[1],
            defaults={
                "kind": TagRuleKind.RULE,
                "description": "Two or more paid orders in the last 30 days.",
                "tag_name": "frequent_buyer",
                "tag_category": "behaviour",
                "conditions": [{"event": "order_paid", "within_days": 30, "op": "gte", "count": 2}],
            },
        )
        for rule in (preference, frequent):
            rule.full_clean()
            result = self._on_worker(tasks.recompute_tag_rule.delay(rule.pk), f"Tag rule {rule.name!r}")
            self.say(f"Tags: {rule.name!r} computed on the worker, {result['members']} tagged.")

    def tiers(self) -> None:
        from crm import services
        from crm.models import CustomerValue, RecomputeRun

        # A fresh install has the classic tiers and scheme from its migrations; an emptied
        # database gets them back, and what operators configured is left alone.
        services.ensure_default_setup()
        run = services.request_recompute()

        def done() -> tuple[int, int]:
            status = RecomputeRun.objects.filter(pk=run.pk).values_list("status", flat=True).first()
            if status == RecomputeRun.Status.FAILED:
                raise DemoError(f"The value recompute failed: {RecomputeRun.objects.get(pk=run.pk).error}")
            return int(status in (RecomputeRun.Status.DONE, RecomputeRun.Status.SKIPPED)), 1

        self._wait("value tiers (RFM) on the worker", done)
        counts = dict(
            CustomerValue.objects.exclude(tier=None).values_list("tier__slug").annotate(n=Count("profile")).order_by()
        )
        self.say("Tiers: " + ", ".join(f"{slug} {n}" for slug, n in sorted(counts.items(), key=lambda kv: -kv[1])))

    def coupons(self) -> None:
        from campaigns import services as campaign_services
        from campaigns.selectors import segment_profile_ids
        from coupons import services
        from coupons.models import Coupon, IssuanceJob
        from profiles.models import Profile

        definition = {"tier": [COUPON_TIER]}
        segment = campaign_services.create_segment(
            name="Demo: core customers", definition=definition, description="The RFM important-value tier."
        )
        members = sorted(
            Profile.objects.filter(pk__in=segment_profile_ids(segment.pk)).values_list("user_id", flat=True)
        )
        size = len(members)
        # A first wave of at most COUPON_WAVE of them (issuing is one guarded reservation per
        # person), with a budget for four in five: the rule shows that issuance stops at the budget.
        wave = sorted(random.Random(self.seed).sample(members, min(size, COUPON_WAVE)))
        budget = Decimal(30) * max(1, math.ceil(len(wave) * 0.8))
        rule = services.create_rule(
            name=COUPON_RULE_NAME,
            description="A thank-you for the best customers.",
            kind="threshold",
            value=Decimal(30),
            min_spend=Decimal(200),
            valid_days=30,
            budget=budget,
            per_user_limit=1,
            eligible_tiers=[COUPON_TIER],
        )
        if not wave:
            self.say(f"Coupons: rule {rule.name!r} for the {COUPON_TIER} tier, which has nobody yet.")
            return
        job = services.create_issuance_job(rule=rule, user_ids=wave)

        def done() -> tuple[int, int]:
            j = IssuanceJob.objects.get(pk=job.pk)
            if j.status == IssuanceJob.Status.FAILED:
                raise DemoError(f"The coupon issuance job failed: {j.error}")
            return (j.processed if j.status != IssuanceJob.Status.DONE else len(wave)), len(wave)

        self._wait("coupons issued on the worker", done, unit="person")
        job.refresh_from_db()
        coupons = list(Coupon.objects.filter(rule=rule).select_related("profile").order_by("id"))
        now = timezone.now()
        orders, redeemed = [], 0
        for coupon in coupons:
            if self._chance(coupon.profile.user_id, f"redeem:{rule.pk}") >= COUPON_REDEEM_RATE:
                continue
            amount = Decimal(self.rng.randint(200, 900)).quantize(Decimal("0.01"))
            order = self._order(coupon.profile.user_id, now - timedelta(minutes=1), coupon_code=coupon.code)
            order["properties"]["amount"] = str(amount)
            services.redeem_coupon(
                code=coupon.code,
                user_id=coupon.profile.user_id,
                order_id=order["properties"]["order_id"],
                order_amount=amount,
            )
            orders.append(order)
            redeemed += 1
        self._post_events(orders)
        self.say(
            f"Coupons: rule {rule.name!r} for the {COUPON_TIER} tier ({size} people), budget {budget};"
            f" a first wave of {len(wave)}: {job.issued} issued, {job.refused} refused, {redeemed} redeemed."
        )

    def campaign(self) -> dict[str, Any]:
        from campaigns import services, tasks
        from campaigns.models import AssignmentRole, Campaign, CampaignPhase, CampaignStatus, Channel, ChannelKind
        from campaigns.selectors import campaign_results, segment_size

        # The push channel now points at the demo gateway, audited as in the admin.
        channel = Channel.objects.filter(kind=ChannelKind.PUSH).first() or Channel(kind=ChannelKind.PUSH)
        channel.url, channel.enabled = f"{self.gateway_url}/push", True
        services.save_channel(channel=channel, changed=["url", "enabled"])
        definition = {"all": [{"trait": "push_opt_in", "op": "eq", "value": True}, {"tier": CUSTOMER_TIERS}]}
        audience = segment_size(definition)
        segment = services.create_segment(
            name="Demo: customers who take pushes",
            definition=definition,
            description="Customers of any tier with push consent.",
        )
        holdout, pilot = Decimal(20), Decimal(50)
        campaign = services.create_campaign(
            name=CAMPAIGN_NAME,
            segment=segment,
            channel=ChannelKind.PUSH,
            variants=[
                {"name": "A", "title": "We miss you", "body": "New arrivals in your favourite shop."},
                {"name": "B", "title": "Free delivery today", "body": "Order today and delivery is on us."},
            ],
            holdout_percent=holdout,
            pilot_percent=pilot,
            # A winner needs this many in each group; a smaller demo world still gets one.
            min_sample=min(100, max(10, int(audience * holdout / 100 / 2))),
            # The demo runs at any hour; a real campaign keeps the recipients' quiet hours.
            respect_quiet_hours=False,
        )
        services.launch_campaign(campaign_id=campaign.pk)
        self.say(f"Campaign {campaign.name!r}: {audience} in the audience, holdout {holdout}%, pilot {pilot}%.")

        def started() -> tuple[int, int]:
            return int(Campaign.objects.filter(pk=campaign.pk, phase=CampaignPhase.PILOT).exists()), 1

        self._wait("pilot audience snapshot on the worker", started)
        self._deliver(campaign, CampaignPhase.PILOT, "pilot pushes to the gateway")
        self._respond(campaign, CampaignPhase.PILOT, holdout=True)

        campaign.refresh_from_db()
        results = campaign_results(campaign)
        winner = results["winner"]
        self._print_results(results)
        if winner is None:
            raise DemoError(
                f"The pilot named no winner ({results['summary']}); the demo world is too small (try more --users)."
            )
        services.rollout_campaign(campaign_id=campaign.pk)
        self.say(f"Rolled out the winner {winner!r} to the rest of the audience.")
        self._deliver(campaign, CampaignPhase.ROLLOUT, "roll-out pushes to the gateway")
        self._respond(campaign, CampaignPhase.ROLLOUT, holdout=False)

        self._on_worker(tasks.sweep.delay(), "The sweeper")
        campaign.refresh_from_db()
        # Every message is out; conversions count until the attribution window closes.
        if campaign.status != CampaignStatus.SENT:
            raise DemoError(f"The campaign is {campaign.status} after the sweep; expected sent.")
        clone = services.clone_campaign(campaign_id=campaign.pk)
        final = campaign_results(campaign)
        self._print_results(final)
        rollout = campaign.assignments.filter(role=AssignmentRole.ROLLOUT).count()
        self.say(
            f"Sent; next iteration {clone.name!r} (draft, control {clone.variants.first().name})."
            f" Roll-out group: {rollout}."
        )
        return {"campaign": campaign.pk, "clone": clone.pk, "winner": winner, "results": final}

    def _deliver(self, campaign: Any, phase: str, what: str) -> None:
        from campaigns.models import Delivery, DeliveryStatus

        def done() -> tuple[int, int]:
            rows = Delivery.objects.filter(campaign=campaign, phase=phase)
            open_ = rows.filter(status__in=[DeliveryStatus.PENDING, DeliveryStatus.SENDING]).count()
            total = rows.count()
            return total - open_, total

        self._wait(what, done, unit="msg")

    def _received(self) -> list[dict]:
        messages: list[dict] = []
        while True:
            page = self.http.get(f"{self.gateway_url}/messages", params={"since": self.gateway_cursor}, timeout=30)
            page.raise_for_status()
            body = page.json()
            messages.extend(m["payload"] for m in body["messages"])
            if body["next"] == self.gateway_cursor:
                return messages
            self.gateway_cursor = body["next"]

    def _respond(self, campaign: Any, phase: str, *, holdout: bool) -> None:
        """The recipients of `phase` react to what reached their phones, at the hidden rates; in
        the pilot the holdout buys at its own (organic) rate."""
        from campaigns.models import Assignment, AssignmentRole, Delivery

        rows = Delivery.objects.filter(campaign=campaign, phase=phase).values_list("pk", "idempotency_key", "sent_at")
        in_phase = {pk: sent_at for pk, _key, sent_at in rows}
        keys = {str(key) for _pk, key, _sent_at in rows}
        messages = [m for m in self._received() if m.get("idempotency_key") in keys]
        now = timezone.now()
        receipts, orders = [], []
        for m in sorted(messages, key=lambda m: m["delivery_id"]):
            rates = HIDDEN_RATES[m["variant"]]
            user, sent_at = m["user_id"], in_phase[m["delivery_id"]] or now
            if self._chance(user, f"{phase}:delivered") >= rates.delivered:
                receipts.append({"delivery_id": m["delivery_id"], "status": "failed", "at": now.isoformat()})
                if self._chance(user, f"{phase}:converted") < HIDDEN_RATES["holdout"].converted:
                    orders.append(self._order(user, now))
                continue
            receipts.append({"delivery_id": m["delivery_id"], "status": "delivered", "at": sent_at.isoformat()})
            converts = self._chance(user, f"{phase}:converted") < rates.converted
            # Those who buy came through the message: they opened it and clicked.
            if converts or self._chance(user, f"{phase}:clicked") < rates.clicked:
                receipts.append({"delivery_id": m["delivery_id"], "status": "clicked", "at": now.isoformat()})
            elif self._chance(user, f"{phase}:opened") < rates.opened:
                receipts.append({"delivery_id": m["delivery_id"], "status": "opened", "at": now.isoformat()})
            if converts:
                orders.append(self._order(user, now))
        if holdout:
            for user in Assignment.objects.filter(campaign=campaign, role=AssignmentRole.HOLDOUT).values_list(
                "user_id", flat=True
            ):
                if self._chance(user, f"{phase}:converted") < HIDDEN_RATES["holdout"].converted:
                    orders.append(self._order(user, now))
        applied = self._post_receipts(receipts) if receipts else 0
        bought = self._post_events(orders) if orders else 0
        self.say(
            f"Recipients ({phase}): {len(messages)} pushes reached the gateway, {applied} receipts, {bought} orders."
        )

    def _print_results(self, results: dict[str, Any]) -> None:
        for g in results["groups"]:
            rate = g["conversion_rate"]
            p = g["p_value"]
            self.say(
                f"  {g['name']:>8}: {g['assigned']:>6} assigned, {g['converted']:>5} converted"
                f" ({(rate or 0) * 100:5.1f}%)" + (f", p={p:.2g}" if p is not None else "")
            )
        self.say(f"  winner: {results['winner'] or 'none yet'}")
