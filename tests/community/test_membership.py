"""Community events keep contacts, membership, history and activity, identity-mapped."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest
from django.utils import timezone

from community.models import CommunityGroup, Contact, MemberActivity, Membership, MembershipChange, OperatorAccount
from community.services import apply_pending_community_events, rebuild_community
from profiles.models import Profile
from profiles.services import identify
from tests.factories.community import CommunityGroupFactory, OperatorAccountFactory, event, send

pytestmark = pytest.mark.django_db


def test_joins_leaves_and_messages_keep_membership_history_and_activity():
    group = CommunityGroupFactory(external_id="g-1")
    # At 10:00 UTC, so that the two messages an hour apart fall on one day whenever this runs.
    t = (timezone.now() - timedelta(days=3)).astimezone(UTC).replace(hour=10, minute=0, second=0, microsecond=0)
    result = send(
        event("community_joined", t, user_id="u1", group_id="g-1"),
        event("community_message", t + timedelta(hours=1), user_id="u1", group_id="g-1"),
        event("community_message", t + timedelta(hours=2), user_id="u1", group_id="g-1"),
        event("community_left", t + timedelta(days=1), user_id="u1", group_id="g-1"),
    )
    assert result.accepted == 4 and not result.rejected
    m = Membership.objects.get(group=group, profile__user_id="u1")
    assert (m.is_member, m.joins, m.leaves, m.messages) == (False, 1, 1, 2)
    assert m.first_joined_at == t and m.last_message_at == t + timedelta(hours=2)
    assert list(MembershipChange.objects.filter(group=group).order_by("at").values_list("action", flat=True)) == [
        "joined",
        "left",
    ]
    assert MemberActivity.objects.get(group=group).messages == 2


def test_a_late_older_leave_does_not_undo_a_newer_join():
    CommunityGroupFactory(external_id="g-1")
    t = timezone.now() - timedelta(days=3)
    send(event("community_joined", t, user_id="u1", group_id="g-1"))
    send(event("community_left", t - timedelta(days=1), user_id="u1", group_id="g-1"))
    m = Membership.objects.get(profile__user_id="u1")
    assert m.is_member is True and m.leaves == 1 and m.state_at == t


def test_a_replayed_batch_counts_nothing_twice():
    CommunityGroupFactory(external_id="g-1")
    t = timezone.now() - timedelta(days=1)
    batch = [event("community_message", t, user_id="u1", group_id="g-1")]
    send(*batch)
    apply_pending_community_events()
    rebuild_community()
    rebuild_community()
    assert Membership.objects.get(profile__user_id="u1").messages == 1
    assert MemberActivity.objects.get().messages == 1


def test_unknown_account_and_group_are_created_unassigned():
    t = timezone.now() - timedelta(hours=2)
    send(
        event("community_contact_added", t, user_id="u1", account_id="new-acct", channel="parcel_card"),
        event("community_joined", t, user_id="u1", group_id="new-group"),
    )
    account = OperatorAccount.objects.get(external_id="new-acct")
    group = CommunityGroup.objects.get(external_id="new-group")
    assert account.operator_id is None and group.operator_id is None
    assert account.first_seen_at == t
    contact = Contact.objects.get(account=account)
    assert contact.channel == "parcel_card" and contact.profile.user_id == "u1"


def test_event_without_its_account_or_group_id_is_refused_with_the_reason_and_others_stored():
    t = timezone.now() - timedelta(hours=1)
    result = send(
        event("community_joined", t, user_id="u1"),
        event("community_contact_added", t, user_id="u1", account_id="   "),
        event("community_message", t, user_id="u1", group_id=42),
        event("community_joined", t, user_id="u1", group_id="ok"),
    )
    assert result.accepted == 1
    reasons = {r.index: r.errors for r in result.rejected}
    assert "is required for community_joined" in reasons[0]["properties.group_id"][0]
    assert "is required for community_contact_added" in reasons[1]["properties.account_id"][0]
    assert "properties.group_id" in reasons[2]
    assert Membership.objects.get().group.external_id == "ok"


def test_anonymous_member_is_applied_once_identified():
    CommunityGroupFactory(external_id="g-1")
    t = timezone.now() - timedelta(hours=3)
    send(event("community_joined", t, anonymous_id="openid-abc", group_id="g-1"))
    assert not Membership.objects.exists()  # nobody to attach it to yet
    identify(user_id="u9", anonymous_id="openid-abc")
    assert apply_pending_community_events() == 1
    assert Membership.objects.get().profile.user_id == "u9"


def test_membership_follows_the_surviving_profile_of_a_merge():
    g1, g2 = CommunityGroupFactory(external_id="g-1"), CommunityGroupFactory(external_id="g-2")
    t = timezone.now() - timedelta(days=2)
    send(
        event("community_joined", t, user_id="wx-openid-1", group_id="g-1"),
        event("community_message", t + timedelta(hours=1), user_id="wx-openid-1", group_id="g-1"),
        event("community_joined", t, user_id="wx-openid-2", group_id="g-2"),
        event("community_joined", t + timedelta(hours=5), user_id="app-user", group_id="g-1"),
        event("community_message", t + timedelta(hours=6), user_id="app-user", group_id="g-1"),
    )
    # Two openids of one person (many-to-one) are tied to the app user: both profiles merge into it.
    identify(user_id="app-user", identities=[("unionid", "union-1")])
    identify(user_id="wx-openid-1", identities=[("unionid", "union-1")])
    identify(user_id="wx-openid-2", identities=[("unionid", "union-1")])
    survivor = Profile.objects.get(user_id="wx-openid-2").merged_into or Profile.objects.get(user_id="wx-openid-2")
    rows = {m.group_id: m for m in Membership.objects.all()}
    assert set(rows) == {g1.pk, g2.pk}
    assert {m.profile_id for m in rows.values()} == {survivor.pk}
    assert rows[g1.pk].joins == 2 and rows[g1.pk].messages == 2 and rows[g1.pk].first_joined_at == t
    assert MemberActivity.objects.filter(group=g1).values_list("profile_id", flat=True).distinct().count() == 1
    assert set(MembershipChange.objects.values_list("profile_id", flat=True)) == {survivor.pk}


def test_accounts_that_events_name_keep_their_operator():
    account = OperatorAccountFactory(external_id="acct-9")
    send(event("community_contact_added", timezone.now() - timedelta(hours=1), user_id="u1", account_id="acct-9"))
    account.refresh_from_db()
    assert account.operator_id is not None and Contact.objects.get().account == account


def test_ids_are_kept_as_sent_and_an_over_long_one_is_refused():
    t = timezone.now() - timedelta(hours=1)
    result = send(
        event("community_joined", t, user_id="u1", group_id=" g 1 "),
        event("community_joined", t, user_id="u1", group_id="g" * 129),
    )
    assert result.accepted == 1
    assert result.rejected[0].errors == {"properties.group_id": ["is longer than 128 characters"]}
    assert Membership.objects.get().group.external_id == " g 1 "
