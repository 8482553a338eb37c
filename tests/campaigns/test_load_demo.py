"""`manage.py load_demo` builds its world through the product's own paths and runs once."""

from io import StringIO

import pytest
from django.core.management import call_command

from profiles.models import Identity, Profile
from tracking.models import Event

pytestmark = pytest.mark.django_db


def test_demo_users_come_with_identities_events_and_seen_times_and_a_second_run_adds_nothing():
    call_command("load_demo", "--users", "12", "--days", "20", stdout=StringIO(), stderr=StringIO())
    profiles = Profile.objects.filter(user_id__startswith="demo-")
    assert profiles.count() == 12
    one = profiles.get(user_id="demo-000003")
    assert one.phone == "+8613800000003"
    assert Identity.objects.filter(profile=one, kind="phone", value="+8613800000003").exists()
    assert one.first_seen_at is not None and one.last_seen_at >= one.first_seen_at
    assert one.events.filter(name="signup").count() == 1
    events = Event.objects.count()
    out = StringIO()
    call_command("load_demo", "--users", "12", stdout=out, stderr=StringIO())
    assert "already loaded" in out.getvalue()
    assert (Profile.objects.count(), Event.objects.count()) == (12, events)
