from __future__ import annotations

import pytest

from campaigns.models import ChannelKind
from tests.factories.campaigns import ChannelFactory


@pytest.fixture(autouse=True)
def push_gateway(db):
    """A journey launches only on a ready channel; tests that post use their own receiver."""
    ChannelFactory(kind=ChannelKind.PUSH, url="http://127.0.0.1:9/push")
