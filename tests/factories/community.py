"""Factories for the community app: operators (staff users), accounts, groups, and a helper that
sends community events through ingestion as the product does."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import factory
from django.contrib.auth import get_user_model

from community.models import CampaignCredit, CommunityGroup, OperatorAccount, ScoreDimension
from tracking.services import IngestResult, ingest_events


class OperatorFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"operator{n}")
    is_staff = True


class OperatorAccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = OperatorAccount

    external_id = factory.Sequence(lambda n: f"acct-{n}")
    name = factory.Sequence(lambda n: f"Account {n}")
    operator = factory.SubFactory(OperatorFactory)


class CommunityGroupFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CommunityGroup

    external_id = factory.Sequence(lambda n: f"grp-{n}")
    name = factory.Sequence(lambda n: f"Group {n}")
    operator = factory.SubFactory(OperatorFactory)


class CampaignCreditFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CampaignCredit


class ScoreDimensionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ScoreDimension
        django_get_or_create = ("key",)


def event(
    name: str, at: datetime, *, user_id: str | None = None, anonymous_id: str | None = None, **properties: Any
) -> dict[str, Any]:
    """One event as the product sends it."""
    body: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "name": name,
        "timestamp": at.isoformat(),
        "properties": properties,
    }
    if user_id:
        body["user_id"] = user_id
    if anonymous_id:
        body["anonymous_id"] = anonymous_id
    return body


def send(*events: dict[str, Any], now: datetime | None = None) -> IngestResult:
    """Ingest events through `tracking.services.ingest_events`, every listener included."""
    return ingest_events(events=list(events), now=now)
