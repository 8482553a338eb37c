"""The one way numbers, money and times are written for operators (config/formatting.py)."""

import zoneinfo
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import hypothesis
from django.template import Context, Template
from django.utils import timezone, translation
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from config import formatting as f


def test_percentages_p_values_and_uplift_read_at_a_glance():
    assert f.percent(0.076) == "7.6 %"
    assert f.percent(Decimal("0.5"), 0) == "50 %"
    assert f.p_value(0.0004) == "< 0.001" and f.p_value(0.0312) == "0.031"
    assert f.relative_uplift(0.123) == "+12.3 %" and f.relative_uplift(-0.05) == "-5.0 %"
    assert f.uplift_points(0.012) == "+1.20 pp"
    assert f.number(Decimal("1234.5")) == "1,234.50" and f.number(0.26, 1) == "0.3" and f.number(None) == f.MISSING
    assert f.percent(None) == f.p_value(None) == f.money(None) == f.MISSING


def test_money_has_its_currency_and_thousands_separators(settings):
    assert f.money(Decimal("12345.6")) == "¥12,345.60"
    assert f.money("-3") == "-¥3.00"
    assert f.money(10, "HKD") == "HKD 10.00"
    settings.OPSLOOP_CURRENCY = "USD"
    assert f.money(Decimal("1000000")) == "$1,000,000.00"
    assert f.column("Revenue", f.currency_label()) == "Revenue ($)"


@given(st.decimals(min_value=-(10**9), max_value=10**9, places=2, allow_nan=False))
def test_any_amount_reads_back_to_itself(amount):
    text = f.money(amount)
    assert Decimal(text.replace("¥", "").replace(",", "")) == amount


@given(st.floats(min_value=0, max_value=1, allow_nan=False))
def test_any_p_value_is_either_below_the_floor_or_three_decimals(p):
    text = f.p_value(p)
    assert text == "< 0.001" if p < 0.001 else abs(float(text) - p) <= 0.0005 + 1e-12


def test_times_are_in_the_readers_zone():
    moment = datetime(2026, 11, 27, 4, 1, 56, 560061, tzinfo=UTC)
    with timezone.override(zoneinfo.ZoneInfo("Asia/Shanghai")):
        assert f.local_time(moment) == "27 Nov 2026, 12:01 CST"
        assert f.local_time(moment.isoformat()) == "27 Nov 2026, 12:01 CST"
    with timezone.override(zoneinfo.ZoneInfo("Europe/Berlin")):
        assert f.local_time(moment) == "27 Nov 2026, 05:01 CET"


def test_days_ago_and_days_ahead_as_a_person_says_them():
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # a Wednesday
    with timezone.override(UTC):
        assert f.time_ago(now - timedelta(days=3), now=now) == "3 days ago"
        assert f.time_ago(now - timedelta(hours=1), now=now) == "today"
        assert f.day_ahead(now + timedelta(days=2), now=now) == "Friday"
        assert f.day_ahead(now + timedelta(days=1), now=now) == "tomorrow"
        assert f.day_ahead(now + timedelta(days=20), now=now) == "15 Dec 2026"


def test_months_and_chart_days_read_as_people_write_them():
    with translation.override("en"):
        assert (f.month_label(date(2026, 3, 1)), f.day_label(date(2026, 11, 27))) == ("Mar 2026", "27 Nov")
    with translation.override("zh-hans"):
        assert (f.month_label(date(2026, 3, 1)), f.day_label(date(2026, 11, 27))) == ("2026年3月", "11月27日")
    # A moment is first put on the reader's clock: 20:00 UTC on 31 March is April in Shanghai.
    with timezone.override(zoneinfo.ZoneInfo("Asia/Shanghai")):
        assert f.month_label(datetime(2026, 3, 31, 20, 0, tzinfo=UTC)) == "Apr 2026"
    assert f.month_label(None) == f.day_label("not a day") == f.MISSING
    # A day written as text is that day wherever the reader is, not midnight UTC moved west.
    with timezone.override(zoneinfo.ZoneInfo("America/New_York")):
        assert (f.month_label("2026-03-01"), f.local_date("2026-03-01")) == ("Mar 2026", "1 Mar 2026")


def test_the_filters_need_no_load_in_any_template():
    html = Template("{{ r|percent }} {{ m|money }} {{ p|p_value }}").render(
        Context({"r": 0.25, "m": 1234, "p": 0.00001})
    )
    assert html == "25.0 % ¥1,234.00 &lt; 0.001"


def test_the_browsers_time_zone_cookie_sets_the_pages_zone(rf):
    seen = []
    middleware = f.OperatorTimeZoneMiddleware(lambda request: seen.append(str(timezone.get_current_timezone())))
    for cookie in ("America/New_York", "Asia%2FShanghai", "Not/AZone", ""):
        request = rf.get("/admin/")
        request.COOKIES["opsloop_tz"] = cookie
        middleware(request)
    assert seen == ["America/New_York", "Asia/Shanghai", "UTC", "UTC"]
    assert str(timezone.get_current_timezone()) == "UTC"  # nothing leaks past the request


def _zone_seen_for(rf, cookie: str) -> str:
    seen = []
    middleware = f.OperatorTimeZoneMiddleware(lambda request: seen.append(str(timezone.get_current_timezone())))
    request = rf.get("/admin/")
    request.COOKIES["opsloop_tz"] = cookie
    middleware(request)
    return seen[0]


def test_a_cookie_naming_a_folder_or_an_overlong_name_falls_back_to_the_sites_zone(rf):
    for cookie in ("America", "Asia%2F", "..%2F..%2Fetc", "x" * 300, "Europe/" + "y" * 300, "a\x00b", "%00", "/"):
        assert _zone_seen_for(rf, cookie) == "UTC", cookie


ZONES = sorted(zoneinfo.available_timezones())
cookies = (
    st.text()
    | st.text(min_size=250, max_size=400, alphabet="abcXYZ/_")
    | st.sampled_from(sorted({z.rsplit("/", 1)[0] for z in ZONES if "/" in z}))  # folders of the zone database
    | st.builds(lambda z, tail: z + tail, st.sampled_from(ZONES), st.text(max_size=5))
    | st.sampled_from(ZONES)
)


@hypothesis.settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cookie=cookies)
def test_no_cookie_text_breaks_a_request(rf, cookie):
    """Whatever the browser sends back: the page is drawn, in a real zone or the site's."""
    zone = _zone_seen_for(rf, cookie)
    assert zone == "UTC" or zone in zoneinfo.available_timezones()


def test_a_bad_zone_cookie_still_gets_the_page(client):
    for cookie in ("America", "z" * 300):
        client.cookies["opsloop_tz"] = cookie
        assert client.get("/admin/login/").status_code == 200, cookie


NUMBER_FILTERS = (
    f.count,
    f.number,
    f.percent,
    f.percent_points,
    f.relative_uplift,
    f.uplift_points,
    f.p_value,
    f.money,
)
TIME_FILTERS = (f.local_time, f.local_date, f.time_ago, f.day_ahead, f.shown, f.label)


def test_numbers_no_one_can_write_read_as_missing():
    for value in ("NaN", "-Infinity", "Infinity", "sNaN", float("nan"), float("inf"), Decimal("NaN"), "1e30", "9" * 60):
        for fn in NUMBER_FILTERS:
            assert fn(value) == f.MISSING, (fn.__name__, value)
    assert f.money("99999999999999999999999.99") == "¥99,999,999,999,999,999,999,999.99"


def test_moments_at_the_ends_of_the_calendar_read_as_written():
    with timezone.override(zoneinfo.ZoneInfo("Asia/Shanghai")):
        assert f.shown("0001-01-01T00:00:00+05:00") == "0001-01-01T00:00:00+05:00"
        assert f.shown("9999-12-31T23:59:00-05:00") == "9999-12-31T23:59:00-05:00"
        for fn in (f.local_time, f.local_date, f.time_ago, f.day_ahead):
            assert fn("0001-01-01T00:00:00+05:00") == f.MISSING, fn.__name__
        assert f.local_time("0001-01-01T09:00:00+00:00") == "1 Jan 1, 17:05 LMT"


anything = (
    st.text()
    | st.decimals()
    | st.floats()
    | st.integers()
    | st.datetimes(timezones=st.timezones())
    | st.dates()
    | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
    | st.recursive(st.none() | st.booleans() | st.text() | st.floats(), lambda inner: st.lists(inner, max_size=3))
    | st.dictionaries(st.text(max_size=5), st.text() | st.floats(), max_size=3)
)


@hypothesis.settings(max_examples=400, deadline=None)
@given(value=anything, zone=st.sampled_from(["UTC", "Asia/Shanghai", "Pacific/Kiritimati", "Etc/GMT+12"]))
def test_every_filter_gives_text_for_any_value(value, zone):
    """Properties and traits are whatever the product sent: no value may take a page down."""
    with timezone.override(zoneinfo.ZoneInfo(zone)):
        for fn in NUMBER_FILTERS + TIME_FILTERS:
            assert isinstance(fn(value), str), fn.__name__
