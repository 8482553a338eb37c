"""`manage.py load_demo`: a synthetic shop loaded through the product's own paths (identify, event
ingestion), then one full turn of the operations loop on the real Celery worker (see
`demo.world`, `demo.loop`). Safe to run twice: what is already there is not loaded again."""

from __future__ import annotations

import os
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from campaigns.models import Campaign, CampaignStatus
from demo.loop import DemoLoop
from demo.world import CAMPAIGN_NAME, USER_PREFIX, DemoError, load_world, recompute_tier_history
from profiles.models import Profile


class Command(BaseCommand):
    help = "Load the demo world and run one full loop of tags, tiers, coupons and an A/B campaign."

    def add_arguments(self, parser):
        parser.add_argument("--users", type=int, default=20_000)
        parser.add_argument("--days", type=int, default=90, help="days of activity written (default 90)")
        parser.add_argument(
            "--signup-days",
            type=int,
            default=450,
            help="people signed up over this many days (default 450: lifecycle stages and tiers of a real shop)",
        )
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--jobs", type=int, default=2, help="loader processes for the world (default 2)")
        parser.add_argument("--no-loop", action="store_true", help="only the world, no tags/tiers/campaign")
        parser.add_argument(
            "--api-url",
            default=os.environ.get("OPSLOOP_DEMO_API_URL") or getattr(settings, "OPSLOOP_PUBLIC_URL", ""),
            help="where the simulated devices and gateway call back (the running web server)",
        )
        parser.add_argument(
            "--gateway-url",
            default=os.environ.get("OPSLOOP_DEMO_GATEWAY_URL", "http://127.0.0.1:8099"),
            help="the demo gateway (python -m demo.gateway)",
        )
        parser.add_argument("--worker-timeout", type=float, default=60, help="seconds to wait for a worker")
        parser.add_argument("--step-timeout", type=float, default=600, help="seconds each worker step may take")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **o):
        if o["users"] < 1:
            raise CommandError("--users must be at least 1.")
        started = time.monotonic()
        world = Profile.objects.filter(user_id__startswith=USER_PREFIX).exists()
        # A cancelled demo campaign is one an operator set aside: the loop may run again.
        campaign = (
            Campaign.objects.filter(name=CAMPAIGN_NAME).exclude(status=CampaignStatus.CANCELLED).order_by("-pk").first()
        )
        if world and (
            o["no_loop"] or (campaign and campaign.status in (CampaignStatus.SENT, CampaignStatus.COMPLETED))
        ):
            status = f" (demo campaign {campaign.get_status_display().lower()})" if campaign else ""
            self.stdout.write(f"Demo data already loaded{status}; nothing to do.")
            return
        if world and campaign:
            raise CommandError(
                f"The demo campaign {campaign.name!r} is {campaign.get_status_display().lower()}: an earlier"
                " loop stopped before it finished. Cancel it (admin: Campaigns, action 'Cancel selected"
                " campaigns') and run the demo again; the demo users are kept and the loop starts over."
            )
        loop = DemoLoop(
            api_url=o["api_url"],
            gateway_url=o["gateway_url"],
            seed=o["seed"],
            timeout=o["step_timeout"],
            progress=not o["no_progress"],
            say=self.stdout.write,
        )
        try:
            if not o["no_loop"]:
                # Before anything is loaded: a missing worker or server fails in seconds, not minutes.
                loop.check_services()
                loop.wait_for_worker(o["worker_timeout"])
            if world:
                self.stdout.write("Demo users already loaded; running the loop.")
            else:
                users, events = load_world(
                    users=o["users"],
                    days=o["days"],
                    seed=o["seed"],
                    jobs=o["jobs"],
                    progress=not o["no_progress"],
                    signup_days=o["signup_days"],
                )
                self.stdout.write(
                    f"Loaded {users} demo users (signed up over {max(o['days'], o['signup_days'])} days)"
                    f" and {events} events over the last {o['days']} days"
                    f" in {time.monotonic() - started:.0f} s."
                )
                dates = recompute_tier_history(days=o["days"])
                self.stdout.write(f"Value tiers recomputed at {len(dates)} dates of the history (tier movements).")
            if not o["no_loop"]:
                loop.run()
        except DemoError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Demo ready in {time.monotonic() - started:.0f} s.")
