import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_operator_signs_in_and_sees_the_back_office(page, login, make_staff):
    login(make_staff("Operations", username="olivia"))
    assert page.title() == "Operations back office | opsloop"
    assert page.locator("#user-tools").inner_text().upper().startswith("WELCOME, OLIVIA")


def test_wrong_password_keeps_the_operator_out(page, make_staff):
    make_staff("Operations", username="oscar")
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", "oscar")
    page.fill("#id_password", "not-the-password")
    page.click("input[type=submit]")
    assert "/admin/login/" in page.url
    assert page.locator(".errornote").is_visible()
