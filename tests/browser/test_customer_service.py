"""Customer service in a real headless Chromium: an agent looks a caller up by phone and sees the
number masked; a superuser finds the lookup in the audit list."""

from __future__ import annotations

import pytest

from profiles.normalize import parse_traits
from profiles.services import identify

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = "+8613912345678"


def test_agent_sees_the_caller_with_the_phone_masked_and_the_lookup_is_audited(page, login, make_staff):
    known, custom, _ = parse_traits({"name": "Li Lei", "phone": PHONE, "city": "Chengdu"})
    identify(user_id="caller-1", identities=[("phone", PHONE)], traits=known, custom_traits=custom)
    login(make_staff("Customer service", username="carol"))

    page.goto("/admin/profiles/profile/lookup/")
    page.fill("input[name=q]", "139 1234 5678")  # as the caller reads it out
    page.click("input[type=submit][value='Look up']")
    found = page.locator("#content .module").first
    found.wait_for()
    text = found.inner_text()
    assert "caller-1" in text and "Li Lei" in text
    assert "139****5678" in text
    shown = page.locator("#content").inner_text().replace(" ", "")
    assert "13912345678" not in shown and "1391234" not in shown

    page.context.clear_cookies()
    login(make_staff(username="auditor", superuser=True))
    page.goto("/admin/profiles/lookuprecord/")
    row = page.locator("#result_list tbody tr").first
    assert "carol" in row.inner_text() and "139 1234 5678" in row.inner_text()
