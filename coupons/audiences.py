"""The hook through which a higher app (campaigns) tells coupons who is in a segment.

`coupons` sits below `campaigns` and must not import it: campaigns registers a resolver from its
AppConfig.ready(), and bulk issuance to a segment asks it for the segment's profile ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

SegmentResolver = Callable[[int], Iterable[int]]
_resolver: SegmentResolver | None = None


def register_segment_resolver(resolver: SegmentResolver) -> None:
    """`resolver(segment_id)` yields the profile ids of that segment (now)."""
    global _resolver
    _resolver = resolver


def segment_resolver() -> SegmentResolver | None:
    return _resolver
