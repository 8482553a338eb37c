"""Normalising what the product sends about a person: phones to E.164, e-mails, and trait types.

Every entry point (identify, lookup, admin search, CSV import) goes through these functions, so
`+86 138 0013 8000`, `138-0013-8000` and `13800138000` are one identity everywhere.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from functools import cache
from typing import Any
from zoneinfo import available_timezones

import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.utils.dateparse import parse_date, parse_datetime

from profiles.models import Gender, IdentityKind

KNOWN_TRAITS = (
    "name",
    "gender",
    "birth_date",
    "region",
    "city",
    "timezone",
    "phone",
    "email",
    "signup_at",
    "push_opt_in",
    "sms_opt_in",
    "email_opt_in",
)
CUSTOM_TRAITS_MAX_BYTES = 16 * 1024
CUSTOM_TRAIT_KEY_MAX = 64
IDENTITY_KINDS = tuple(k for k in IdentityKind.values if k != IdentityKind.USER_ID)


def default_region() -> str:
    return getattr(settings, "OPSLOOP_DEFAULT_PHONE_REGION", "CN")


def normalize_phone(value: str) -> str:
    """E.164 form of a phone number written in any common way; ValueError when it is no number."""
    text = str(value).strip()
    if not text or len(text) > 40:
        raise ValueError("Not a phone number.")
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, default_region())
    except phonenumbers.NumberParseException as exc:
        raise ValueError("Not a phone number.") from exc
    if not phonenumbers.is_valid_number(number):
        raise ValueError("Not a valid phone number.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(value: str) -> str:
    text = str(value).strip()
    try:
        validate_email(text)
    except ValidationError as exc:
        raise ValueError("Not a valid e-mail address.") from exc
    # The domain is case-insensitive by RFC; the local part is in practice treated so by every
    # large provider, and two spellings of one address must not become two people.
    return text.lower()


def normalize_identity(kind: str, value: Any) -> str:
    """The stored form of an identity value; ValueError naming the problem."""
    if kind not in IdentityKind.values:
        raise ValueError(f"Unknown identity kind '{kind}'.")
    if not isinstance(value, str):
        raise ValueError("Must be a string.")
    if kind == IdentityKind.PHONE:
        return normalize_phone(value)
    if kind == IdentityKind.EMAIL:
        return normalize_email(value)
    text = value.strip()
    if not text:
        raise ValueError("May not be blank.")
    if "\x00" in text:
        raise ValueError("May not contain NUL characters.")
    if len(text) > 256:
        raise ValueError("At most 256 characters.")
    return text


@cache
def _timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def _text(max_length: int):
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("Must be a string.")
        if len(value) > max_length:
            raise ValueError(f"At most {max_length} characters.")
        if "\x00" in value:
            raise ValueError("May not contain NUL characters.")
        return value.strip()

    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("Must be true or false.")
    return value


def _gender(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in Gender.values:
        raise ValueError(f"Must be one of {', '.join(v for v in Gender.values if v)} or empty.")
    return value.strip().lower()


def _birth_date(value: Any) -> date:
    parsed = parse_date(value) if isinstance(value, str) else None
    if parsed is None:
        raise ValueError("Must be a date as YYYY-MM-DD.")
    if parsed > date.today() or parsed.year < 1900:
        raise ValueError("Must be a date between 1900 and today.")
    return parsed


def _timezone(value: Any) -> str:
    if not isinstance(value, str) or value not in _timezones():
        raise ValueError("Must be an IANA time zone name such as Asia/Shanghai.")
    return value


def _signup_at(value: Any) -> datetime:
    try:
        parsed = parse_datetime(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise ValueError("Must be an ISO 8601 timestamp.")
    if parsed.tzinfo is None:
        raise ValueError("Must carry a time zone offset.")
    return parsed


def _phone(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("Must be a string.")
    return normalize_phone(value)


def _email(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("Must be a string.")
    return normalize_email(value)


TRAIT_PARSERS = {
    "name": _text(200),
    "gender": _gender,
    "birth_date": _birth_date,
    "region": _text(100),
    "city": _text(100),
    "timezone": _timezone,
    "phone": _phone,
    "email": _email,
    "signup_at": _signup_at,
    "push_opt_in": _bool,
    "sms_opt_in": _bool,
    "email_opt_in": _bool,
}
# The value a known trait takes when the product clears it with null.
TRAIT_EMPTY = {
    "name": "",
    "gender": "",
    "birth_date": None,
    "region": "",
    "city": "",
    "timezone": "",
    "phone": "",
    "email": "",
    "signup_at": None,
    "push_opt_in": False,
    "sms_opt_in": False,
    "email_opt_in": False,
}


def parse_traits(traits: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Split `traits` into (known columns, custom traits, errors by trait name)."""
    if not isinstance(traits, dict):
        return {}, {}, {"traits": "Must be an object."}
    known: dict[str, Any] = {}
    custom: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key, value in traits.items():
        if key in TRAIT_PARSERS:
            if value is None:
                known[key] = TRAIT_EMPTY[key]
                continue
            try:
                known[key] = TRAIT_PARSERS[key](value)
            except ValueError as exc:
                errors[key] = str(exc)
        elif not key or len(key) > CUSTOM_TRAIT_KEY_MAX:
            errors[key or "(empty)"] = f"Custom trait names are 1-{CUSTOM_TRAIT_KEY_MAX} characters."
        else:
            custom[key] = value
    encoded = json.dumps(custom, default=str)
    if len(encoded.encode()) > CUSTOM_TRAITS_MAX_BYTES:
        errors["traits"] = f"Custom traits may take at most {CUSTOM_TRAITS_MAX_BYTES // 1024} KiB as JSON."
    elif "\\u0000" in encoded:
        # PostgreSQL's jsonb cannot hold NUL characters.
        errors["traits"] = "Custom traits may not contain NUL characters."
    return known, custom, errors


def mask_phone(phone: str) -> str:
    """`+8613812345678` -> `138****5678`: enough for the caller to recognise, not to dial."""
    if not phone:
        return ""
    try:
        national = str(phonenumbers.parse(phone, default_region()).national_number)
    except phonenumbers.NumberParseException:
        national = phone.lstrip("+")
    if len(national) <= 7:
        return national[:2] + "*" * max(len(national) - 4, 1) + national[-2:]
    return national[:3] + "****" + national[-4:]


def mask_email(email: str) -> str:
    """`zhang.wei@example.com` -> `z***@example.com`."""
    if not email or "@" not in email:
        return ""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def mask_identifier(value: str) -> str:
    """`oAbCdEf123` -> `oAb***23`: an openid, unionid, device id or cookie, recognisable to the
    person who reads it out, useless to anyone who copies it."""
    if not value:
        return ""
    if len(value) <= 6:
        return "***"
    return f"{value[:3]}***{value[-2:]}"


# Event property names that carry a person's identifiers or contact data (compared lower-cased,
# with `-` and spaces as `_`).
PERSONAL_PROPERTY_KEYS = frozenset(
    {
        "phone", "mobile", "tel", "telephone", "phone_number", "email", "e_mail", "openid", "unionid",
        "device", "device_id", "idfa", "idfv", "imei", "oaid", "android_id", "address", "id_card", "name",
        "real_name", "full_name", "ip", "ip_address",
    }
)  # fmt: skip
_EMAIL_LIKE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Written with a country code: order numbers and amounts, all digits too, are left alone.
_PHONE_LIKE = re.compile(r"^\+[0-9][0-9 ()-]{6,}[0-9]$")


def mask_properties(value: Any, key: str = "") -> Any:
    """Event properties as a reader without the personal-data right may see them: values under
    personal keys masked, and any string that looks like an e-mail or an international phone number masked
    wherever it is, in nested objects and lists too."""
    if isinstance(value, dict):
        return {k: mask_properties(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_properties(v, key) for v in value]
    if not isinstance(value, str | int) or isinstance(value, bool):
        return value
    text = str(value)
    if isinstance(value, str) and _EMAIL_LIKE.match(text):
        return mask_email(text)
    if isinstance(value, str) and _PHONE_LIKE.match(text):
        return mask_phone(text)
    if key.lower().replace("-", "_").replace(" ", "_") in PERSONAL_PROPERTY_KEYS:
        return mask_identifier(text)
    return value
