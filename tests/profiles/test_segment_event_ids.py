"""A Segment message's event id is `uuid5(NAMESPACE, messageId)`: the same for every retry of a
message, and never changed, or ids already stored would stop matching their retries."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from profiles.segment import NAMESPACE, event_id_for


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=300))
def test_the_event_id_of_a_message_id_is_its_uuid5(message_id):
    assert event_id_for(message_id) == str(uuid.uuid5(NAMESPACE, message_id))


def test_a_message_without_an_id_gets_an_id_of_its_own():
    first, second = event_id_for(""), event_id_for("")
    assert first != second
    assert uuid.UUID(first).version == 4
