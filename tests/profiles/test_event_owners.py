"""Whose events, for reads that get events from the events store instead of the
`profiles_profileevent` view: `event_keys_of`, `user_id_owners` and `event_owner` give every
event the profile the view gives it, merges and keys of other people included."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from profiles.models import Profile, ProfileEvent
from profiles.selectors import event_keys_of, event_owner, user_id_owners
from tracking import services as tracking_services

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 9, 1, 10, tzinfo=UTC)


def _event(minute: int, *, user=None, anonymous=None) -> dict:
    event = {
        "event_id": str(uuid.uuid4()),
        "name": "app_open",
        "timestamp": (T0 + timedelta(minutes=minute)).isoformat(),
    }
    event |= {"user_id": user} if user else {}
    event |= {"anonymous_id": anonymous} if anonymous else {}
    return event


def test_the_owner_of_each_event_is_the_profile_the_view_gives_it():
    result = tracking_services.ingest_events(
        events=[
            _event(0, anonymous="c1"),  # an anonymous visitor ...
            _event(1, user="u1", anonymous="c1"),  # ... who signs in: c1 is u1's
            _event(2, user="u2", anonymous="c1"),  # u2 on u1's cookie: u2's event
            _event(3, user="u3"),
            _event(4, anonymous="c3"),
            _event(5, user="u3", anonymous="c3"),
            _event(6, anonymous="c9"),  # never identified
        ]
    )
    assert result.accepted == 7
    live = list(Profile.objects.filter(merged_into__isnull=True).values_list("id", flat=True))

    owners = event_keys_of(live)
    events = list(ProfileEvent.objects.values_list("user_id", "anonymous_id", "profile_id"))
    owners |= user_id_owners(u for u, _a, _p in events if u is not None)

    assert [event_owner(owners, user_id=u, anonymous_id=a) for u, a, _p in events] == [p for _u, _a, p in events]
    assert {p for _u, _a, p in events} - {None} == set(live) and len(live) >= 3
    # Only the cohort asked about: a user id of someone outside it is looked up, not guessed.
    u1 = next(p for u, _a, p in events if u == "u1")
    only_u1 = event_keys_of([u1])
    assert event_owner(only_u1, user_id="u2", anonymous_id="c1") == u1  # wrong without the look-up
    only_u1 |= user_id_owners(["u2"])
    assert event_owner(only_u1, user_id="u2", anonymous_id="c1") != u1
    assert user_id_owners([]) == {} and user_id_owners(["nobody"]) == {}
