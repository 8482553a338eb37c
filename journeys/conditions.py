"""Branching on a trait: the operators, what each accepts as the value to compare with (checked
when the steps are saved), and whether a person's trait meets the condition.

A trait is a profile field (name, city, ...) or a custom trait (`Profile.traits`), so its value
may be text, a number, a boolean, a list or absent. `equals` compares a trait held as a number
(JSON `10`, `10.0`) as a number, and text as text: a code such as "01234" or "1e3" is not the
number 1234 or 1000. A boolean trait (JSON `true`) equals "true" (any case). Order conditions
compare numbers as numbers (text that reads as one included) and dates (`YYYY-MM-DD`, or the date
part of a timestamp) as dates; a value that is not of the operand's kind never meets one. `in`
takes its values as a JSON list (`["a,b", "c"]`) or separated by commas, with double quotes
around a value that holds a comma (`"a,b", c`). A missing value (absent, null or "") meets only
`missing`, `not equals` and `equals ""`.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from django.utils.translation import gettext

from journeys.models import TraitOperator

ORDER = (TraitOperator.GREATER, TraitOperator.GREATER_OR_EQUAL, TraitOperator.LESS, TraitOperator.LESS_OR_EQUAL)
NO_OPERAND = (TraitOperator.EXISTS, TraitOperator.MISSING)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def as_number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | Decimal):
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    elif isinstance(value, str) and value.strip():
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
    else:
        return None
    return number if number.is_finite() else None


def as_date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and _DATE.match(value):
        try:
            return dt.date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def operand_problem(operator: str, operand: str) -> str | None:
    """Why `operand` cannot be compared with `operator`, naming the field, or None."""
    if operator not in ("", *TraitOperator.values):
        return gettext("trait_operator: one of %(operators)s.") % {"operators": ", ".join(TraitOperator.values)}
    if operator in ORDER and as_number(operand) is None and as_date(operand) is None:
        return gettext("trait_value: %(operator)r compares with a number or a date (YYYY-MM-DD), not %(operand)r.") % {
            "operator": operator,
            "operand": operand,
        }
    if operator == TraitOperator.IN and not in_values(operand):
        return gettext(
            "trait_value: 'in' needs the values: a JSON list, or separated by commas (quote one with a comma)."
        )
    if operator == TraitOperator.CONTAINS and not operand:
        return gettext("trait_value: 'contains' needs the text or the list item to look for.")
    if operator in NO_OPERAND and operand:
        return gettext("trait_value: %(operator)r takes no value (leave it empty).") % {"operator": operator}
    return None


def _missing(value: Any) -> bool:
    return value is None or value == ""


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def in_values(operand: str) -> list[str]:
    """The values of an `in` condition: a JSON list, or comma-separated with CSV quoting."""
    text = operand.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            items = None
        if isinstance(items, list):
            return [item if isinstance(item, str) else json.dumps(item) for item in items if item != ""]
    try:
        row = next(csv.reader([text], skipinitialspace=True), [])
    except csv.Error:
        row = text.split(",")
    return [item.strip() for item in row if item.strip()]


def _equals(value: Any, operand: str) -> bool:
    if isinstance(value, bool):
        word = operand.strip().lower()
        if word in ("true", "false"):
            return value is (word == "true")
        return _text(value) == operand
    # Numbers compare as numbers only when the trait is one: text is compared as written.
    if isinstance(value, int | float | Decimal):
        left, right = as_number(value), as_number(operand)
        if left is not None and right is not None:
            return left == right
    return _text(value) == operand


def _order(value: Any, operator: str, operand: str) -> bool:
    right_number = as_number(operand)
    if right_number is not None:
        left: Any = as_number(value)
        right: Any = right_number
    else:
        left, right = as_date(value), as_date(operand)
    if left is None or right is None:
        return False
    return {
        TraitOperator.GREATER: left > right,
        TraitOperator.GREATER_OR_EQUAL: left >= right,
        TraitOperator.LESS: left < right,
        TraitOperator.LESS_OR_EQUAL: left <= right,
    }[operator]


def trait_holds(value: Any, operator: str, operand: str) -> bool:
    """Whether a person's trait `value` meets `operator operand` ("" is the former `equals`)."""
    operator = operator or TraitOperator.EQUALS
    if operator == TraitOperator.EXISTS:
        return not _missing(value)
    if operator == TraitOperator.MISSING:
        return _missing(value)
    if operator == TraitOperator.EQUALS:
        return _equals(value, operand)
    if operator == TraitOperator.NOT_EQUALS:
        return not _equals(value, operand)
    if operator in ORDER:
        return _order(value, operator, operand)
    if _missing(value):
        return False
    if operator == TraitOperator.IN:
        return any(_equals(value, item) for item in in_values(operand))
    if operator == TraitOperator.CONTAINS:
        if isinstance(value, list | tuple):
            return any(_text(item) == operand for item in value)
        return isinstance(value, str) and operand in value
    return False


def describe(operator: str, operand: str) -> str:
    label = TraitOperator(operator or TraitOperator.EQUALS).label
    return label if operator in NO_OPERAND else f"{label} {operand}"
