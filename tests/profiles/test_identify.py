"""Identity mapping: identify, merges, phone formats, trait validation and the ingestion listener."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiles import selectors, services
from profiles.models import Identity, IdentityKind, Profile, ProfileEvent, ProfileMerge, ProfileTag, TagChange
from tests.factories.profiles import ProfileFactory, TagFactory, ingest

pytestmark = pytest.mark.django_db


def identify(client, **body):
    return client.post("/api/v1/identify", body, format="json")


@pytest.fixture
def writer(make_api_client):
    return make_api_client("events:write")


def test_identify_creates_the_profile_of_a_new_user(writer):
    response = identify(writer, user_id="alice", traits={"name": "Alice", "city": "Hangzhou"})
    assert response.status_code == 200, response.content
    assert response.json() == {"user_id": "alice", "merged_profiles": 0}
    profile = selectors.profile_for_user_id("alice")
    assert (profile.name, profile.city) == ("Alice", "Hangzhou")


def test_identify_stores_phone_as_e164_so_all_common_formats_are_one_identity(writer):
    identify(writer, user_id="alice", identities=[{"kind": "phone", "value": "+86 138 0013 8000"}])
    for written in ("13800138000", "138-0013-8000", "0086 13800138000", "+8613800138000"):
        response = identify(writer, user_id="alice", identities=[{"kind": "phone", "value": written}])
        assert response.json()["merged_profiles"] == 0
    assert list(Identity.objects.filter(kind="phone").values_list("value", flat=True)) == ["+8613800138000"]


def test_two_profiles_sharing_a_phone_are_merged_into_the_identified_one(writer):
    identify(writer, user_id="old-account", identities=[{"kind": "phone", "value": "13800138000"}])
    response = identify(writer, user_id="new-account", identities=[{"kind": "phone", "value": "+86 138 0013 8000"}])
    assert response.json() == {"user_id": "new-account", "merged_profiles": 1}
    old, new = Profile.objects.get(user_id="old-account"), Profile.objects.get(user_id="new-account")
    assert old.merged_into_id == new.id
    assert selectors.profile_for_user_id("old-account") == new
    merge = ProfileMerge.objects.get()
    assert (merge.into_id, merge.merged_id, merge.merged_user_id) == (new.id, old.id, "old-account")
    assert "phone" in merge.reason
    assert set(Identity.objects.filter(profile=new).values_list("kind", flat=True)) == {"user_id", "phone"}


def test_events_of_a_merged_profile_follow_it_without_being_rewritten(writer):
    ingest([{"user_id": "old-account"}, {"user_id": "old-account"}, {"user_id": "new-account"}])
    identify(writer, user_id="old-account", identities=[{"kind": "email", "value": "A@Example.com"}])
    identify(writer, user_id="new-account", identities=[{"kind": "email", "value": "a@example.com"}])
    new = Profile.objects.get(user_id="new-account")
    assert ProfileEvent.objects.filter(profile_id=new.id).count() == 3
    assert sorted(ProfileEvent.objects.values_list("user_id", flat=True)) == ["new-account"] + ["old-account"] * 2


def test_merge_keeps_the_more_recent_value_of_each_trait(writer):
    identify(writer, user_id="a", traits={"city": "Beijing", "name": "A", "vip_level": 2})
    identify(writer, user_id="b", traits={"city": "Shanghai"})
    # Profile a sets its name later than b ever did; b's city is the more recent one.
    identify(writer, user_id="a", traits={"name": "A. Newer"})
    identify(writer, user_id="b", identities=[{"kind": "device", "value": "dev-1"}])
    identify(writer, user_id="a", identities=[{"kind": "device", "value": "dev-1"}])
    a = Profile.objects.get(user_id="a")
    assert a.name == "A. Newer"
    assert a.traits == {"vip_level": 2}
    b_city_at = Profile.objects.get(user_id="b").trait_updated_at["city"]
    assert a.trait_updated_at["city"] == b_city_at or a.city == "Beijing"
    assert a.city == "Shanghai"  # b set its city after a did


def test_merge_unites_tags_and_records_the_changes(writer):
    identify(writer, user_id="a", identities=[{"kind": "openid", "value": "o-1"}])
    identify(writer, user_id="b")
    fan = TagFactory(name="fan")
    services.tag_profiles(tag_name="fan", profile_ids=[Profile.objects.get(user_id="a").id])
    identify(writer, user_id="b", identities=[{"kind": "openid", "value": "o-1"}])
    b = Profile.objects.get(user_id="b")
    assert list(ProfileTag.objects.filter(tag=fan).values_list("profile_id", flat=True)) == [b.id]
    assert TagChange.objects.filter(tag=fan, profile=b, action="added").exists()


def test_identify_with_an_anonymous_id_attributes_earlier_anonymous_events(writer):
    ingest([{"anonymous_id": "anon-9"}, {"anonymous_id": "anon-9"}])
    assert ProfileEvent.objects.filter(anonymous_id="anon-9", profile_id__isnull=False).count() == 0
    identify(writer, user_id="carol", anonymous_id="anon-9")
    carol = Profile.objects.get(user_id="carol")
    assert ProfileEvent.objects.filter(profile_id=carol.id).count() == 2


@pytest.mark.parametrize(
    ("body", "field_path"),
    [
        ({"identities": [{"kind": "phone", "value": "12345"}]}, ("identities", "0", "value")),
        ({"identities": [{"kind": "email", "value": "not-an-email"}]}, ("identities", "0", "value")),
        ({"identities": [{"kind": "passport", "value": "X1"}]}, ("identities", "0", "kind")),
        ({"traits": {"birth_date": "last tuesday"}}, ("traits", "birth_date")),
        ({"traits": {"timezone": "Mars/Olympus"}}, ("traits", "timezone")),
        ({"traits": {"push_opt_in": "yes"}}, ("traits", "push_opt_in")),
        ({"traits": {"signup_at": "2024-01-01T10:00:00"}}, ("traits", "signup_at")),
        ({"traits": {"phone": "call me"}}, ("traits", "phone")),
        ({"traits": "tall"}, ("traits",)),
    ],
)
def test_identify_refuses_bad_input_naming_the_field(writer, body, field_path):
    response = identify(writer, user_id="dave", **body)
    assert response.status_code == 400
    errors = response.json()
    for key in field_path:
        errors = errors[key]
    assert errors
    assert not Profile.objects.filter(user_id="dave").exists()


def test_identify_without_user_id_is_refused(writer):
    response = identify(writer, anonymous_id="x")
    assert response.status_code == 400
    assert "user_id" in response.json()


def test_identify_accepts_valid_known_and_custom_traits(writer):
    response = identify(
        writer,
        user_id="erin",
        traits={
            "birth_date": "1990-05-01",
            "timezone": "Asia/Shanghai",
            "gender": "Female",
            "signup_at": "2024-01-01T10:00:00+08:00",
            "sms_opt_in": True,
            "phone": "138 0013 8000",
            "favourite_team": "Guoan",
        },
    )
    assert response.status_code == 200, response.content
    erin = Profile.objects.get(user_id="erin")
    assert (erin.gender, erin.phone, erin.sms_opt_in) == ("female", "+8613800138000", True)
    assert erin.signup_at == datetime(2024, 1, 1, 2, 0, tzinfo=UTC)
    assert erin.traits == {"favourite_team": "Guoan"}


def test_ingested_events_create_profiles_and_tie_anonymous_ids_seen_with_a_user():
    now = timezone.now()
    ingest(
        [
            {"user_id": "frank", "anonymous_id": "anon-1", "timestamp": now - timedelta(days=3)},
            {"user_id": "frank", "timestamp": now - timedelta(hours=2)},
            {"anonymous_id": "anon-2", "timestamp": now - timedelta(hours=1)},
        ]
    )
    frank = selectors.profile_for_user_id("frank")
    assert frank is not None
    assert frank.first_seen_at == now - timedelta(days=3)
    assert frank.last_seen_at == now - timedelta(hours=2)
    assert Identity.objects.get(kind=IdentityKind.ANONYMOUS_ID, value="anon-1").profile == frank
    # An anonymous id seen alone waits for identify.
    assert not Identity.objects.filter(value="anon-2").exists()
    assert Profile.objects.count() == 1


def test_later_events_move_last_seen_forward_and_never_back():
    ProfileFactory(user_id="gina")
    now = timezone.now()
    ingest([{"user_id": "gina", "timestamp": now - timedelta(minutes=1)}])
    services.update_seen_times()
    ingest([{"user_id": "gina", "timestamp": now - timedelta(days=400)}])
    services.update_seen_times()
    gina = Profile.objects.get(user_id="gina")
    assert gina.last_seen_at == now - timedelta(minutes=1)
    assert gina.first_seen_at == now - timedelta(days=400)


def test_events_under_a_merged_user_id_update_the_surviving_profile(writer):
    identify(writer, user_id="h-old", identities=[{"kind": "cookie", "value": "c1"}])
    identify(writer, user_id="h-new", identities=[{"kind": "cookie", "value": "c1"}])
    later = timezone.now() - timedelta(seconds=5)
    ingest([{"user_id": "h-old", "anonymous_id": "anon-h", "timestamp": later}])
    services.update_seen_times()
    survivor = Profile.objects.get(user_id="h-new")
    assert survivor.last_seen_at == later
    assert Identity.objects.get(value="anon-h").profile == survivor
    assert Profile.objects.count() == 2


def test_profiles_listens_to_ingestion():
    from tracking import hooks

    assert hooks._listeners["profiles"] is services.on_events_ingested


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    user_id=st.text(max_size=140),
    traits=st.dictionaries(
        st.sampled_from(["name", "gender", "birth_date", "timezone", "phone", "email", "signup_at", "sms_opt_in"])
        | st.text(max_size=70),
        json_values,
        max_size=4,
    ),
    identities=st.lists(
        st.fixed_dictionaries(
            {"kind": st.sampled_from(["phone", "email", "device", "openid", "x"]), "value": st.text(max_size=30)}
        ),
        max_size=3,
    ),
)
def test_identify_answers_any_input_with_200_or_a_400_never_a_500(writer, user_id, traits, identities):
    response = identify(writer, user_id=user_id, traits=traits, identities=identities)
    assert response.status_code in (200, 400), response.content


def test_merge_listeners_of_higher_apps_are_told_inside_the_merge(writer, monkeypatch):
    from profiles import lookup

    seen = []
    monkeypatch.setattr(lookup, "_merge_listeners", {})
    lookup.register_merge_listener("test", lambda into, merged: seen.append((into.user_id, merged.user_id)))
    identify(writer, user_id="m-old", identities=[{"kind": "unionid", "value": "un-1"}])
    identify(writer, user_id="m-new", identities=[{"kind": "unionid", "value": "un-1"}])
    assert seen == [("m-new", "m-old")]
