"""The demo's people signed up over more than a year, so lifecycle stages look like a shop's:
new ones and long-time ones, some of whom drifted away; activity is written for the last days only."""

from datetime import UTC, datetime, timedelta

from demo.world import demo_user

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def signed_up(call: dict) -> datetime:
    value = call["traits"]["signup_at"]
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def test_people_signed_up_over_the_history_and_act_only_in_the_recent_window():
    people = [demo_user(seed=7, index=i, days=90, now=NOW, signup_days=450) for i in range(400)]
    signups = [signed_up(call) for call, _events in people]
    window = NOW - timedelta(days=90)
    old = sum(s < window for s in signups)
    assert 0.7 < old / len(people) < 0.85  # about 360 of 450 days lie before the window
    assert min(signups) < NOW - timedelta(days=365)
    for (_call, events), signup in zip(people, signups, strict=True):
        assert [e["name"] for e in events].count("signup") == 1
        later = [e for e in events if datetime.fromisoformat(e["timestamp"]) > signup + timedelta(minutes=10)]
        assert all(datetime.fromisoformat(e["timestamp"]) >= window for e in later)
    # Some long-time customers have stopped coming: nothing from them in the last 30 days.
    quiet = [
        events
        for (_call, events), signup in zip(people, signups, strict=True)
        if signup < window
        and not any(datetime.fromisoformat(e["timestamp"]) > NOW - timedelta(days=30) for e in events)
    ]
    assert len(quiet) > 40


def test_without_a_longer_history_everyone_signed_up_within_the_window():
    people = [demo_user(seed=7, index=i, days=90, now=NOW) for i in range(50)]
    assert all(signed_up(call) >= NOW - timedelta(days=90) for call, _ in people)
