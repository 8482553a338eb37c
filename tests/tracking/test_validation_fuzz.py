"""Whatever an event holds, ingestion answers with a verdict for it and never fails."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from datetime import timezone as tz

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracking.services import ingest_events

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
timestamps = st.datetimes(
    min_value=datetime(1960, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC) | st.none()
).map(lambda d: d.isoformat())
events = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.uuids().map(str) | st.text(max_size=40) | json_values,
        "name": st.sampled_from(["app_open", "page_view", "order_paid", "search"]) | st.text(max_size=70),
        "kind": st.sampled_from(["behavior", "traffic", "business", "other"]) | json_values,
        "timestamp": timestamps | st.text(max_size=30) | json_values,
        "user_id": st.text(max_size=140) | json_values,
        "anonymous_id": st.text(max_size=20),
        "properties": st.dictionaries(st.text(max_size=10), json_values, max_size=5) | json_values,
        "context": st.dictionaries(
            st.sampled_from(["url", "referrer", "utm_source", "ip", "os", "locale", "x"]), json_values | st.text()
        )
        | json_values,
    },
)


@pytest.mark.django_db
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=events)
def test_any_event_is_stored_or_rejected_with_reasons_never_an_error(event):
    result = ingest_events(events=[event])
    assert result.accepted + result.duplicates + len(result.rejected) == 1
    for rejection in result.rejected:
        assert rejection.errors
        assert all(isinstance(reasons, list) and reasons for reasons in rejection.errors.values())


@pytest.mark.django_db
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    properties=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    url=st.text(max_size=60),
    offset_minutes=st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_a_well_formed_event_with_any_properties_and_offset_is_stored(properties, url, offset_minutes):
    local = tz(timedelta(minutes=offset_minutes))
    event = {
        "event_id": str(uuid.uuid4()),
        "name": "app_open",
        "timestamp": datetime(2025, 6, 1, 12, 0, tzinfo=local).isoformat(),
        "user_id": "u-1",
        "properties": properties,
        "context": {"url": "https://shop.example.com/" + url},
    }
    result = ingest_events(events=[event])
    if result.rejected:  # only text PostgreSQL cannot hold may be refused
        reasons = " ".join(r for rs in result.rejected[0].errors.values() for r in rs)
        assert "NUL" in reasons or "surrogate" in reasons
    else:
        assert result.stored[0].timestamp == datetime(2025, 6, 1, 12, 0, tzinfo=local).astimezone(UTC)
