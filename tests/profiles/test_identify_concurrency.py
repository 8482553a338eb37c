"""identify calls racing on the same identities: one person at the end, no merge lost."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction

from profiles import services
from profiles.models import Identity, IdentityKind, Profile, ProfileMerge

pytestmark = pytest.mark.django_db(transaction=True)


def race(calls: list[dict]) -> list[BaseException]:
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(kwargs: dict) -> None:
        try:
            barrier.wait()
            services.identify(**kwargs)
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(kwargs,)) for kwargs in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_racing_identify_of_one_new_user_creates_one_profile():
    errors = race([{"user_id": "same", "identities": [("phone", "13800138000")]} for _ in range(4)])
    assert errors == []
    assert Profile.objects.filter(user_id="same").count() == 1
    assert Identity.objects.filter(kind=IdentityKind.PHONE).count() == 1
    assert ProfileMerge.objects.count() == 0


def test_racing_identify_of_users_sharing_a_phone_ends_with_one_person_and_every_merge_recorded():
    users = [f"racer-{i}" for i in range(4)]
    formats = ["13800138000", "+86 138 0013 8000", "138-0013-8000", "+8613800138000"]
    errors = race([{"user_id": u, "identities": [("phone", f)]} for u, f in zip(users, formats, strict=True)])
    assert errors == []
    holders = set(
        Identity.objects.filter(kind=IdentityKind.USER_ID, value__in=users).values_list("profile_id", flat=True)
    )
    assert len(holders) == 1
    survivor = Profile.objects.get(id=holders.pop())
    assert survivor.merged_into_id is None
    assert Identity.objects.get(kind=IdentityKind.PHONE).profile_id == survivor.id
    merged = Profile.objects.filter(user_id__in=users).exclude(id=survivor.id)
    assert all(p.merged_into_id == survivor.id for p in merged)
    assert ProfileMerge.objects.count() == 3


def test_events_ingested_while_a_merge_commits_tie_their_anonymous_id_to_the_survivor():
    """Ingestion that names the merged user while the merge is still open waits for it and ends
    with the anonymous id on the surviving profile, not on the merged one."""
    from tests.factories.profiles import ingest

    services.identify(user_id="loser", identities=[("device", "shared-device")])
    services.identify(user_id="winner")
    merged = threading.Event()
    errors: list[BaseException] = []

    def merge() -> None:
        try:
            with transaction.atomic():
                services.identify(user_id="winner", identities=[("device", "shared-device")])
                merged.set()
                time.sleep(1.0)  # keep the merge open while ingestion runs into it
        except BaseException as exc:
            errors.append(exc)
        finally:
            merged.set()
            connection.close()

    def ingest_events() -> None:
        try:
            merged.wait(10)
            with transaction.atomic():
                ingest([{"user_id": "loser", "anonymous_id": "anon-during-merge"}])
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=merge), threading.Thread(target=ingest_events)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    winner = Profile.objects.get(user_id="winner")
    assert Identity.objects.get(kind=IdentityKind.ANONYMOUS_ID, value="anon-during-merge").profile_id == winner.id
    assert Profile.objects.get(user_id="loser").merged_into_id == winner.id
