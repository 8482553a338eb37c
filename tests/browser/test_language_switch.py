"""The language switch in the admin header, in a real headless Chromium: an operator whose browser
asks for English picks 简体中文, reads the admin in Chinese, and finds it so again when signing in
from another device. The Chinese pages are saved under test-artifacts/i18n/."""

from __future__ import annotations

import pytest

from access.models import StaffLanguage
from tests.browser_fixtures import ARTIFACTS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOTS = ARTIFACTS / "i18n"


def _device(browser, live_server):
    context = browser.new_context(
        base_url=live_server.url, viewport={"width": 1366, "height": 900}, locale="en-US", timezone_id="Asia/Shanghai"
    )
    page = context.new_page()
    page.set_default_timeout(15_000)
    return context, page


def _sign_in(page, username: str) -> None:
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", "pw-for-tests")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")


def test_an_operator_switches_to_chinese_and_keeps_it_on_another_device(browser, live_server, make_staff):
    user = make_staff("Operations", "Analyst", username="mei")
    laptop, page = _device(browser, live_server)
    _sign_in(page, "mei")
    assert page.locator("html").get_attribute("lang") == "en"
    assert "Customer value" in page.inner_text("#content")

    page.select_option("#language-select", "zh-hans")
    page.wait_for_function("document.documentElement.lang === 'zh-hans'")
    content = page.inner_text("#content")
    assert "客户价值" in content and "Customer value" not in content
    assert page.input_value("#language-select") == "zh-hans"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "admin-index-zh-hans.png"), full_page=True)
    page.goto("/admin/monitoring/health/")
    assert "定时任务（beat）" in page.inner_text("#content")
    page.screenshot(path=str(SHOTS / "health-zh-hans.png"), full_page=True)
    laptop.close()
    assert StaffLanguage.objects.get(user=user).language == "zh-hans"

    phone, page = _device(browser, live_server)
    _sign_in(page, "mei")
    assert page.locator("html").get_attribute("lang") == "zh-hans"
    assert "客户价值" in page.inner_text("#content")
    phone.close()
