"""The hook through which a higher app (campaigns) tells coupons who is in a segment.

`coupons` sits below `campaigns` and must not import it: campaigns registers a resolver from its
AppConfig.ready(), and bulk issuance to a segment asks it for the segment's profile ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

SegmentResolver = Callable[[int], Iterable[int]]
SegmentChecker = Callable[[int], bool]
_resolver: SegmentResolver | None = None
_checker: SegmentChecker | None = None


def register_segment_resolver(resolver: SegmentResolver) -> None:
    """`resolver(segment_id)` yields the profile ids of that segment (now)."""
    global _resolver
    _resolver = resolver


def segment_resolver() -> SegmentResolver | None:
    return _resolver


def register_segment_checker(checker: SegmentChecker) -> None:
    """`checker(segment_id)` says whether that segment exists, so a job for an unknown one is
    refused when it is asked for rather than failing later in the worker."""
    global _checker
    _checker = checker


def segment_exists(segment_id: int) -> bool:
    """False when no segment has this id, or when no app that keeps segments is installed."""
    return _checker is not None and _checker(segment_id)
