"""How numbers, money and times read wherever an operator sees them: admin pages, chart labels and
CSV headers all go through these functions, so "7.6 %" on a page is "7.6 %" in its chart too.

The functions are also template filters, available in every template without `{% load %}` (the
module is one of the template engine's `builtins`): `{{ rate|percent }}`, `{{ amount|money }}`,
`{{ p|p_value }}`, `{{ uplift|relative_uplift }}`, `{{ when|local_time }}`, `{{ n|count }}`,
`{{ goal_month|month_label }}`, `{{ day|day_label }}`,
`{{ roi|number:2 }}`.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Callable
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from urllib.parse import unquote

from django import template
from django.conf import settings
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import gettext as _
from django.utils.translation import ngettext, pgettext

register = template.Library()

# What an empty cell shows: a dash reads as "nothing here", where "" looks like a rendering bug.
MISSING = "\N{EN DASH}"
# Currencies whose symbol nobody misreads; any other is written as its ISO code.
SYMBOLS = {"CNY": "¥", "USD": "$", "EUR": "€", "GBP": "£"}


# The most whole digits a number may have to be shown: money keeps two decimals within Decimal's
# 28 significant digits. Anything larger (or NaN, infinity) is no amount anyone wrote on purpose,
# and events other than orders reach these filters unchecked.
MAX_WHOLE_DIGITS = 25


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError, TypeError):
        return None
    if not number.is_finite() or number.adjusted() >= MAX_WHOLE_DIGITS:
        return None
    return number


@register.filter
def count(value: Any) -> str:
    """A whole number with thousands separators: 12,345."""
    number = _decimal(value)
    return MISSING if number is None else f"{int(number):,}"


@register.filter
def number(value: Any, digits: int = 2) -> str:
    """A measured quantity with a fixed number of decimals and thousands separators: `1,234.50`
    (expected orders, a ratio such as ROI, a score)."""
    quantity = _decimal(value)
    return MISSING if quantity is None else f"{quantity:,.{int(digits)}f}"


@register.filter
def percent(value: Any, digits: int = 1) -> str:
    """A share (0.076) as a percentage: `7.6 %`. A value already in percent: `percent_points`."""
    number = _decimal(value)
    return MISSING if number is None else percent_points(number * 100, digits)


@register.filter
def percent_points(value: Any, digits: int = 1) -> str:
    """A number already in percent (7.6) as `7.6 %`."""
    number = _decimal(value)
    if number is None:
        return MISSING
    return f"{number:,.{int(digits)}f} %"


@register.filter
def relative_uplift(value: Any, digits: int = 1) -> str:
    """A relative change (0.123: 12.3 % more than control) with its sign and unit: `+12.3 %`."""
    number = _decimal(value)
    if number is None:
        return MISSING
    points = number * 100
    sign = "+" if points > 0 else ""
    return f"{sign}{points:,.{int(digits)}f} %"


@register.filter
def uplift_points(value: Any, digits: int = 2) -> str:
    """An absolute difference of two rates (0.012) in percentage points: `+1.20 pp`."""
    number = _decimal(value)
    if number is None:
        return MISSING
    points = number * 100
    sign = "+" if points > 0 else ""
    # "pp" is a unit word: Chinese says 个百分点.
    return _("%(points)s pp") % {"points": f"{sign}{points:,.{int(digits)}f}"}


@register.filter
def p_value(value: Any) -> str:
    """A p-value as a reader compares it with alpha: `< 0.001` below that, else three decimals."""
    number = _decimal(value)
    if number is None:
        return MISSING
    if number < Decimal("0.001"):
        return "< 0.001"
    return f"{number:.3f}"


def currency() -> str:
    return getattr(settings, "OPSLOOP_CURRENCY", "CNY")


def currency_label(code: str | None = None) -> str:
    """The unit money is shown in, for a column header or a chart axis: `¥` or `CNY`."""
    code = code or currency()
    return SYMBOLS.get(code, code)


@register.filter
def money(value: Any, code: str | None = None) -> str:
    """An amount with its currency and thousands separators: `¥12,345.60`, `-¥3.00`, `HKD 10.00`."""
    amount = _decimal(value)
    if amount is None:
        return MISSING
    amount = amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    code = code or currency()
    sign = "-" if amount < 0 else ""
    digits = f"{abs(amount):,.2f}"
    if code in SYMBOLS:
        return f"{sign}{SYMBOLS[code]}{digits}"
    return f"{sign}{code} {digits}"


def operator_zone() -> zoneinfo.ZoneInfo:
    """The time zone of the person reading: the one the request activated (their browser's, see
    `OperatorTimeZoneMiddleware`), else the site's."""
    zone = timezone.get_current_timezone()
    return zone if isinstance(zone, zoneinfo.ZoneInfo) else zoneinfo.ZoneInfo(str(zone))


def _in_reader_zone(moment: datetime) -> datetime | None:
    """`moment` on the reader's clock; None where that falls outside years 1-9999 (an ISO string
    such as `0001-01-01T00:00:00+05:00` is valid, yet has no UTC time)."""
    try:
        return moment.astimezone(operator_zone())
    except OverflowError:
        return None


def _as_datetime(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        return value if timezone.is_aware(value) else timezone.make_aware(value, zoneinfo.ZoneInfo("UTC"))
    return None


@register.filter
def local_time(value: Any) -> str:
    """A moment in the reader's time zone, to the minute, with the zone's abbreviation:
    `27 Nov 2026, 12:01 CST`. Accepts datetimes and ISO strings (as JSON sections carry them)."""
    moment = _as_datetime(value)
    if moment is None:
        return MISSING if not isinstance(value, date) else local_date(value)
    moment = _in_reader_zone(moment)
    if moment is None:
        return MISSING
    # The reader's language may write dates its own way (Django `date` letters: 2026年11月27日 12:01).
    pattern = pgettext("date format", "j M Y, H:i")
    if pattern == "j M Y, H:i":  # English, with the year as written (Django's `Y` pads it to 4 digits)
        return f"{moment.day} {moment:%b %Y, %H:%M} {moment.tzname()}"
    return f"{date_format(moment, pattern)} {moment.tzname()}"


@register.filter
def local_date(value: Any) -> str:
    """A day: `27 Nov 2026` (a moment is first put in the reader's time zone)."""
    return _day_written(value, pgettext("date format", "j M Y"), "j M Y", lambda d: f"{d.day} {d:%b %Y}")


def _day_written(value: Any, pattern: str, english_pattern: str, english: Callable[[date], str]) -> str:
    """`value`'s day in the reader's language's date `pattern` (Django `date` letters). English
    is written here, with the year as written: Django's `Y` pads it to four digits."""
    day = _calendar_day(value)
    if day is None:
        return MISSING
    return english(day) if pattern == english_pattern else date_format(day, pattern)


def _calendar_day(value: Any) -> date | None:
    """A day as given (a date, or an ISO date string), or the reader's day of a moment."""
    if isinstance(value, str) and len(value.strip()) == 10:
        try:
            return date.fromisoformat(value.strip())  # a day, not midnight UTC of it
        except ValueError:
            pass
    moment = _as_datetime(value)
    if moment is not None:
        local = _in_reader_zone(moment)
        return None if local is None else local.date()
    return value if isinstance(value, date) else None


@register.filter
def month_label(value: Any) -> str:
    """A calendar month: `Mar 2026` (2026年3月), for goal months, score months and their charts."""
    return _day_written(value, pgettext("date format", "M Y"), "M Y", lambda d: f"{d:%b} {d.year}")


@register.filter
def day_label(value: Any) -> str:
    """A day on a chart's axis, short: `27 Nov` (11月27日), for charts whose days run up to today."""
    return _day_written(value, pgettext("date format", "j M"), "j M", lambda d: f"{d.day} {d:%b}")


@register.filter
def time_ago(value: Any, now: datetime | None = None) -> str:
    """How long ago, in the largest whole unit a person would say: `3 days ago`, `today`."""
    moment = _as_datetime(value)
    local = None if moment is None else _in_reader_zone(moment)
    if local is None:
        return MISSING
    now = now or timezone.now()
    days = (now.astimezone(operator_zone()).date() - local.date()).days
    if days < 0:
        return day_ahead(moment, now=now)
    if days == 0:
        return _("today")
    if days == 1:
        return _("yesterday")
    if days < 60:
        return ngettext("%(n)d day ago", "%(n)d days ago", days) % {"n": days}
    months = days // 30
    if months < 24:
        return ngettext("%(n)d month ago", "%(n)d months ago", months) % {"n": months}
    years = days // 365
    return ngettext("%(n)d year ago", "%(n)d years ago", years) % {"n": years}


@register.filter
def day_ahead(value: Any, now: datetime | None = None) -> str:
    """A coming day as a person says it: `today`, `tomorrow`, `Friday` (within a week), else the date."""
    moment = _as_datetime(value)
    local = None if moment is None else _in_reader_zone(moment)
    if local is None:
        return MISSING
    today = (now or timezone.now()).astimezone(operator_zone()).date()
    day = local.date()
    days = (day - today).days
    if days == 0:
        return _("today")
    if days == 1:
        return _("tomorrow")
    if 1 < days < 7:
        return _(day.strftime("%A"))
    return local_date(moment)


def column(label: str, unit: str = "") -> str:
    """A CSV or table header with its unit: `Conversion rate (%)`, `Revenue (¥)`."""
    return f"{label} ({unit})" if unit else label


# The admin's pages write the browser's IANA zone into this cookie (config/templates/admin/base_site.html).
TIME_ZONE_COOKIE = "opsloop_tz"


@functools.cache
def known_zones() -> frozenset[str]:
    """Every IANA zone name this machine can load (reading the database's folders takes a while:
    once per process)."""
    return frozenset(zoneinfo.available_timezones())


class OperatorTimeZoneMiddleware:
    """Activate the reader's time zone (from the cookie their browser sets) for the request, so
    every `local_time` and every form shows their clock; an unknown or missing zone: the site's."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        name = unquote(request.COOKIES.get(TIME_ZONE_COOKIE, ""))
        # Only a name the zone database lists: any other text may name a folder of it ("America"),
        # be too long for a file name, or hold a NUL, and ZoneInfo raises a different error for each.
        if name in known_zones():
            timezone.activate(zoneinfo.ZoneInfo(name))
        else:
            timezone.deactivate()
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()


@register.filter
def label(value: Any) -> str:
    """An internal name as a heading reads: `important_value` -> `Important value`."""
    text = str(value or "").replace("_", " ").replace("-", " ").strip()
    # The same words as a model's or field's label (config/model_labels.py) read in the reader's language.
    translated = _(text.lower()) if text else text
    if translated != text.lower():
        return translated[:1].upper() + translated[1:]
    return text[:1].upper() + text[1:]


@register.filter
def shown(value: Any) -> str:
    """Any stored value as a person reads it: moments in their time zone, yes/no for booleans,
    lists joined, a dash for nothing (JSON traits and properties hold all of these)."""
    if value is None or value == "":
        return MISSING
    if isinstance(value, bool):
        return _("Yes") if value else _("No")
    if isinstance(value, datetime) or (isinstance(value, str) and len(value) >= 16 and value[10:11] == "T"):
        text = local_time(value)
        return text if text != MISSING else str(value)
    if isinstance(value, date):
        return local_date(value)
    if isinstance(value, list | tuple):
        return ", ".join(shown(v) for v in value)
    if isinstance(value, dict):
        return " · ".join(f"{label(k)}: {shown(v)}" for k, v in value.items())
    return str(value)
