"""Refusals of the tracking layer. A whole batch refused is a 400 with the offending field; a single
event refused is reported in the 200 reply beside the events that were stored."""

from __future__ import annotations

from rest_framework.exceptions import ParseError


class BodyTooLarge(ParseError):
    default_code = "body_too_large"
