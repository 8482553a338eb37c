"""The admin as operators and agents use it, in a real headless Chromium at 1366 px: a segment
built from rows with its live size and a typo warned about, a campaign from its form through the
Launch button's forecast to the worker's sends and the results, and a caller looked up as a card.
Every page visited is saved as a screenshot under test-artifacts/walkthrough/."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from campaigns import services
from campaigns.models import Campaign, Channel, ChannelKind, Delivery, DeliveryStatus, Segment
from coupons import services as coupon_services
from crm.models import CustomerValue
from tests.browser_fixtures import ARTIFACTS
from tests.campaigns.receiver import Receiver
from tests.factories.campaigns import make_profiles
from tests.factories.coupons import CouponRuleFactory
from tests.factories.crm import CustomerFactory, ValueTierFactory, paid_order

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOTS = ARTIFACTS / "walkthrough"


@pytest.fixture
def wide_page(browser, live_server):
    """A 1366 px wide page in Shanghai's time zone (an operator's laptop)."""
    context = browser.new_context(
        base_url=live_server.url, viewport={"width": 1366, "height": 900}, timezone_id="Asia/Shanghai"
    )
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def sign_in(page, user) -> None:
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", "pw-for-tests")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")


def shot(page, name: str) -> None:
    """Save the whole page, and check it needs no horizontal scrolling at this width."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(300)  # let charts finish their first frame
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1366, f"{name}: {width} px wide at 1366 px"


def wait_until(condition, *, seconds: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_an_operator_builds_a_segment_from_rows_with_its_live_size_and_a_typo_warned(wide_page, make_staff):
    page = wide_page
    make_profiles(9, prefix="fan", tag="prefers_beauty")
    make_profiles(4, prefix="reader", tag="prefers_books")
    make_profiles(3, prefix="quiet", tag=None)
    sign_in(page, make_staff("Operations", username="sally"))

    page.goto("/admin/campaigns/segment/add/")
    page.fill("#id_name", "Beauty fans")
    page.click(".sb-add")
    page.fill(".sb-row .sb-names-text", "prefers_beauty")
    page.wait_for_function("document.querySelector('.segment-builder').dataset.size === '9'")
    assert "9 people now" in page.inner_text(".sb-size")
    shot(page, "segment-builder-size")

    page.click(".sb-add")
    page.locator(".sb-row").nth(1).locator(".sb-names-text").fill("prefers_beuaty")
    page.wait_for_selector(".sb-warnings li")
    assert "Nobody has the tag 'prefers_beuaty'" in page.inner_text(".sb-warnings")
    shot(page, "segment-builder-warning")

    page.locator(".sb-row").nth(1).locator(".sb-remove").click()
    page.select_option(".sb-match", "any")
    page.click(".sb-add-group")  # a group of its own: any of these
    page.locator(".sb-group .sb-row .sb-names-text").fill("prefers_books")
    page.wait_for_function("document.querySelector('.segment-builder').dataset.size === '13'")
    shot(page, "segment-builder-group")

    # A group inside the group, negated: people who are not book readers (the quiet ones too).
    page.click(".sb-group .sb-add-inner-group")
    nested = page.locator(".sb-group .sb-group")
    nested.locator(".sb-names-text").fill("prefers_books")
    nested.locator(".sb-group-head .sb-not").check()
    page.wait_for_function("document.querySelector('.segment-builder').dataset.size === '16'")
    assert "16 people now" in page.inner_text(".sb-size")
    shot(page, "segment-builder-nested-not")
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist .success")
    segment = Segment.objects.get(name="Beauty fans")
    assert segment.definition == {
        "any": [
            {"tag": "prefers_beauty"},
            {"any": [{"tag": "prefers_books"}, {"not": {"any": [{"tag": "prefers_books"}]}}]},
        ]
    }
    shot(page, "segment-list")

    # The saved JSON draws back as the same rows: the nested group, negated, not the JSON fallback.
    page.goto(f"/admin/campaigns/segment/{segment.pk}/change/")
    page.wait_for_function("document.querySelector('.segment-builder').dataset.size === '16'")
    assert page.locator(".sb-group .sb-group").count() == 1
    assert page.locator(".sb-group .sb-group .sb-group-head .sb-not").is_checked()
    assert page.locator(".sb-complex").is_hidden()


def test_an_operator_creates_a_campaign_launches_it_from_its_forecast_and_reads_the_results(
    wide_page, make_staff, celery_worker
):
    page = wide_page
    make_profiles(30, prefix="shopper")
    make_profiles(6, prefix="quiet", push_opt_in=False)
    services.create_segment(name="Walkthrough shoppers", definition={"tag": "campaign-test"})
    rule = CouponRuleFactory(name="Walkthrough 10 off", value=Decimal("10.00"), budget=Decimal("1000.00"))
    with Receiver() as gateway:
        Channel.objects.update_or_create(kind=ChannelKind.PUSH, defaults={"url": gateway.url, "enabled": True})
        sign_in(page, make_staff("Operations", username="otto"))

        page.goto("/admin/campaigns/campaign/add/")
        page.fill("#id_name", "Walkthrough A/B")
        page.click("#id_segment + .select2 .select2-selection")
        page.fill(".select2-search__field", "Walkthrough")
        page.click(".select2-results__option:has-text('Walkthrough shoppers')")
        page.select_option("#id_channel", "push")
        page.fill("#id_holdout_percent", "0")
        page.fill("#id_min_sample", "5")
        page.uncheck("#id_respect_quiet_hours")
        for index, (name, coupon) in enumerate((("A", None), ("B", rule.pk))):
            if index:
                page.click("#variants-group .add-row a")
            prefix = f"#id_variants-{index}-"
            page.fill(prefix + "position", str(index))
            page.fill(prefix + "name", name)
            page.fill(prefix + "weight", "50")
            page.fill(prefix + "title", f"Hello from {name}")
            page.fill(prefix + "body", "News for you.")
            if coupon:
                page.fill(prefix + "coupon_rule_id", str(coupon))
        shot(page, "campaign-form")
        page.click("input[name=_continue]")
        page.wait_for_selector(".messagelist .success")
        campaign = Campaign.objects.get(name="Walkthrough A/B")
        assert "Walkthrough 10 off" in page.inner_text(".coupon-rule-chosen")
        shot(page, "campaign-page")

        page.click("#launch-button")
        page.wait_for_selector("#launch-forecast")
        forecast = page.inner_text("#launch-forecast")
        assert "36" in forecast  # the audience
        assert page.inner_text("[data-forecast=no_consent]") == "6"
        assert page.inner_text("[data-forecast=will_send]").strip() == "30"
        assert "¥150.00" in page.inner_text("#launch-coupons")  # 15 B recipients, 10 off each
        shot(page, "campaign-launch-forecast")

        page.click("#launch-now")
        page.wait_for_selector(".messagelist .success")
        wait_until(lambda: len(gateway.requests) == 30, what="30 pushes at the gateway")
        wait_until(
            lambda: Delivery.objects.filter(campaign=campaign, status=DeliveryStatus.SENT).count() == 30,
            what="30 deliveries marked sent",
        )

    page.goto(f"/admin/campaigns/campaign/{campaign.pk}/results/")
    page.wait_for_selector("#results-table")
    assert "No consent for this channel" in page.inner_text("#skipped-reasons")
    assert "6" in page.inner_text("#skipped-reasons")
    assert " %" in page.inner_text("#results-table")
    shot(page, "campaign-results")


def test_an_agent_reads_a_caller_as_a_card_with_a_summary_line(wide_page, make_staff):
    page = wide_page
    now = timezone.now()
    person = CustomerFactory(user_id="walk-vip", name="Wang Fang")
    for k in range(4):
        paid_order(person, "300.00", now - timedelta(days=3, hours=k))
    # The value a recompute gives such a customer (the live server's database starts empty of the
    # scoring scheme the migrations seed, so the row is written as the recompute would).
    CustomerValue.objects.create(
        profile=person,
        tier=ValueTierFactory(slug="core", name="Core"),
        segment="important_value",
        lifecycle="active",
        lifecycle_since=now - timedelta(days=200),
        last_order_at=now - timedelta(days=3),
        frequency=4,
        monetary=Decimal("1200.00"),
        r=5,
        f=5,
        m=5,
    )
    coupon_services.issue_coupon(rule=CouponRuleFactory(name="Spring 20 off"), profile=person)
    sign_in(page, make_staff("Customer service", username="agnes"))

    page.goto("/admin/profiles/profile/lookup/?q=walk-vip")
    page.goto("/admin/profiles/profile/lookup/?q=walk-vip")  # the browser's time zone is known now
    card = page.locator(".lookup-card")
    summary = card.locator("[data-summary]").inner_text()
    assert summary.startswith("Core customer, last order 3 days ago, 1 unused coupon")
    assert "Important value" in card.locator("[data-card=value]").inner_text()
    assert "Spring 20 off" in card.locator("[data-table=coupons]").inner_text()
    assert " CST" in card.inner_text()  # the agent's time zone, not the server's
    shot(page, "lookup-card")
