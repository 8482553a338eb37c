"""Fixtures of the coupons tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coupons import audiences


@pytest.fixture
def segment_resolver() -> Iterator:
    """`segment_resolver(fn)` registers a resolver for this test only; the one the apps
    registered at start-up comes back afterwards."""
    previous = audiences.segment_resolver()
    yield audiences.register_segment_resolver
    audiences._resolver = previous
