"""`manage.py load_demo` builds its world through the product's own paths, runs once, and closes
the loop on the real worker: tags, tiers, a coupon rule for the core tier, an A/B push through a
real local gateway whose recipients answer at hidden rates, the winner rolled out, the next
iteration cloned; then the indicator rollups, a funnel and goals for the dashboards."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Sum

from access.models import AuditEntry
from campaigns.models import AssignmentRole, Campaign, CampaignStatus, Channel, Delivery
from campaigns.selectors import campaign_results
from community.models import CommunityGroup, ContributionScore, ScoreRun
from coupons.models import Coupon, CouponRule, Redemption
from crm.models import CustomerValue
from demo.gateway import DemoGateway
from demo.world import CAMPAIGN_NAME, COUPON_RULE_NAME, COUPON_TIER, FUNNEL_NAME, HIDDEN_RATES
from indicators.models import Anomaly, DailyIndicator, Funnel, Goal, SearchDay
from planning.models import Tactic, Task
from profiles.models import Identity, Profile, ProfileTag
from tracking.models import Event


@pytest.mark.django_db
def test_demo_users_come_with_identities_events_and_seen_times_and_a_second_run_adds_nothing():
    call_command("load_demo", "--users", "12", "--days", "20", "--no-loop", "--no-progress", stdout=StringIO())
    profiles = Profile.objects.filter(user_id__startswith="demo-")
    assert profiles.count() == 12
    one = profiles.get(user_id="demo-000003")
    assert one.phone == "+8613800000003"
    assert Identity.objects.filter(profile=one, kind="phone", value="+8613800000003").exists()
    assert one.first_seen_at is not None and one.last_seen_at >= one.first_seen_at
    assert one.events.filter(name="signup").count() == 1
    assert Event.objects.filter(name="product_view").exclude(properties__category=None).exists()
    assert Event.objects.exclude(utm_source="").count() == Event.objects.count()
    events = Event.objects.count()
    out = StringIO()
    call_command("load_demo", "--users", "12", "--no-loop", stdout=out)
    assert "already loaded" in out.getvalue()
    assert (Profile.objects.count(), Event.objects.count()) == (12, events)


@pytest.mark.django_db
def test_the_loop_refuses_before_loading_anything_when_the_gateway_is_not_running():
    with pytest.raises(CommandError, match="demo gateway does not answer"):
        call_command(
            "load_demo", "--users", "5", "--gateway-url", "http://127.0.0.1:9", "--no-progress", stdout=StringIO()
        )
    assert not Profile.objects.exists()


@pytest.mark.django_db
def test_a_loop_that_stopped_before_its_campaign_finished_is_named_and_starts_over_once_cancelled():
    from campaigns import services
    from tests.factories.campaigns import CampaignFactory

    call_command("load_demo", "--users", "5", "--days", "10", "--no-loop", "--no-progress", stdout=StringIO())
    stopped = CampaignFactory(name=CAMPAIGN_NAME, status=CampaignStatus.RUNNING)
    args = ("load_demo", "--users", "5", "--gateway-url", "http://127.0.0.1:9", "--no-progress")

    with pytest.raises(CommandError, match="is running: an earlier loop stopped before it finished"):
        call_command(*args, stdout=StringIO())
    services.cancel_campaign(campaign_id=stopped.pk)
    # The loop starts again: here it stops at once, at the gateway that is not running.
    with pytest.raises(CommandError, match="demo gateway does not answer"):
        call_command(*args, stdout=StringIO())
    assert Profile.objects.filter(user_id__startswith="demo-").count() == 5


# Sequences restart so the campaign gets the same id, hence the same hash-based assignment, on
# every run: with the seeded world and per-person draws the outcome is the same each time.
@pytest.mark.django_db(transaction=True, reset_sequences=True)
def test_the_full_loop_names_the_truly_better_variant_rolls_it_out_and_clones_the_next_iteration(
    celery_worker, live_server
):
    # Restarted sequences collide with rows that migrations left behind (the roles' groups) when
    # this is the session's first transactional test; emptied first, it starts as after any other.
    call_command("flush", interactive=False, reset_sequences=True, verbosity=0)
    out = StringIO()
    with DemoGateway() as gateway:
        args = ["--users", "600", "--jobs", "1", "--no-progress", "--worker-timeout", "30", "--step-timeout", "60"]
        call_command("load_demo", *args, "--api-url", live_server.url, "--gateway-url", gateway.url, stdout=out)
        received = [m["payload"] for m in gateway.messages]

    # Tags and tiers were computed on the worker.
    assert ProfileTag.objects.filter(tag__name__startswith="prefers_").count() > 20
    assert ProfileTag.objects.filter(tag__name="frequent_buyer").exists()
    tiers = set(CustomerValue.objects.exclude(tier=None).values_list("tier__slug", flat=True))
    assert {"core", "important", "ordinary", "potential"} <= tiers

    # The coupon rule is for the core tier and only core customers hold its coupons.
    rule = CouponRule.objects.get(name=COUPON_RULE_NAME)
    assert rule.eligible_tiers == [COUPON_TIER]
    holders = set(Coupon.objects.filter(rule=rule).values_list("profile_id", flat=True))
    core = set(CustomerValue.objects.filter(tier__slug=COUPON_TIER).values_list("profile_id", flat=True))
    assert holders and holders <= core
    assert Redemption.objects.filter(coupon__rule=rule).exists()
    assert rule.committed + rule.spent <= rule.budget

    # The campaign: every push went through the gateway, the receipts came back through the API.
    assert Channel.objects.get(kind="push").url == f"{gateway.url}/push"
    assert AuditEntry.objects.filter(action="campaigns.channel_changed").exists()
    campaign = Campaign.objects.get(name=CAMPAIGN_NAME)
    sent = Delivery.objects.filter(campaign=campaign).exclude(sent_at=None)
    assert sent.count() == len(received) > 0
    assert {str(k) for k in sent.values_list("idempotency_key", flat=True)} == {m["idempotency_key"] for m in received}
    assert sent.exclude(delivered_at=None).count() > 0.9 * sent.count()
    assert sent.exclude(clicked_at=None).exists()

    # The results name the variant whose hidden rate is highest, significantly, and it was rolled out.
    best = max((name for name in HIDDEN_RATES if name != "holdout"), key=lambda n: HIDDEN_RATES[n].converted)
    results = campaign_results(campaign)
    groups = {g["name"]: g for g in results["groups"]}
    assert results["winner"] == best == campaign.winner.name
    assert groups[best]["significant"] and groups[best]["conversion_rate"] > groups["A"]["conversion_rate"]
    assert groups[best]["conversion_rate"] > groups["holdout"]["conversion_rate"]
    assert campaign.status == CampaignStatus.SENT and campaign.rolled_out_at is not None
    rollout = Delivery.objects.filter(campaign=campaign, phase="rollout")
    assert rollout.count() == campaign.assignments.filter(role=AssignmentRole.ROLLOUT).count() > 0
    assert set(rollout.values_list("variant__name", flat=True)) == {best}
    assert groups["rollout"]["converted"] > 0

    # The next iteration starts from the winner.
    clone = Campaign.objects.get(parent=campaign)
    assert clone.iteration == 2 and clone.status == CampaignStatus.DRAFT
    assert clone.variants.order_by("position").first().name == best

    # The dashboards have their numbers: every event folded into the rollups, which agree with
    # the events themselves; searches (some finding nothing), a funnel and this quarter's goals.
    folded = DailyIndicator.objects.aggregate(events=Sum("events"), orders=Sum("orders"))
    assert folded == {"events": Event.objects.count(), "orders": Event.objects.filter(name="order_paid").count()}
    assert SearchDay.objects.filter(zero_results__gt=0).exists() and SearchDay.objects.filter(zero_results=0).exists()
    funnel = Funnel.objects.get(name=FUNNEL_NAME)
    assert list(funnel.steps.values_list("event_name", flat=True)) == ["app_open", "product_view", "order_paid"]
    goals = {g.indicator: g for g in Goal.objects.all()}
    assert set(goals) == {"revenue", "dau"} and all(g.target > 0 for g in goals.values())
    assert goals["revenue"].month_targets.count() == 3
    # ... and the community pages: groups with members, and two months of contribution scores.
    assert CommunityGroup.objects.filter(memberships__isnull=False).distinct().count() >= 2
    runs = ScoreRun.objects.filter(status=ScoreRun.Status.DONE)
    assert runs.values("month").distinct().count() == 2
    assert ContributionScore.objects.filter(run__in=runs).exists()
    # ... and the plan: the revenue goal's two tactics, team tasks, and the injected anomaly's alert.
    assert Tactic.objects.filter(goal=goals["revenue"]).count() == 2
    assert Task.objects.values("team").distinct().count() >= 2
    assert Anomaly.objects.exists()

    # Running it again changes nothing.
    def counts() -> tuple[int, ...]:
        return tuple(m.objects.count() for m in (Profile, Event, Campaign, Delivery, Coupon, Goal, Funnel))

    before = counts()
    again = StringIO()
    call_command("load_demo", "--users", "400", "--no-progress", stdout=again)
    assert "already loaded" in again.getvalue()
    assert counts() == before


@pytest.mark.django_db
def test_the_demo_world_has_months_of_tier_history_with_people_moving_between_tiers(admin_client):
    from datetime import timedelta

    from django.utils import timezone

    from crm.models import ValueChange
    from crm.selectors import tier_movements

    out = StringIO()
    call_command("load_demo", "--users", "80", "--days", "90", "--no-loop", "--no-progress", stdout=out)
    assert "recomputed at 4 dates" in out.getvalue()
    changes = ValueChange.objects.filter(what=ValueChange.What.TIER)
    # The nightly job's record over the past months: changes dated at several past recomputes.
    assert changes.dates("at", "day").count() >= 3
    between_tiers = changes.exclude(from_value="").exclude(to_value="")
    assert between_tiers.exists()
    now = timezone.now()
    moves = tier_movements(start=now - timedelta(days=45), end=now)
    assert moves["moved"] > 0 and moves["stayed"] > 0
    page = admin_client.get(
        "/admin/crm/customervalue/movements/",
        {"start": (now - timedelta(days=45)).date().isoformat(), "end": now.date().isoformat()},
    )
    assert page.status_code == 200 and page.context["result"]["moved"] > 0
