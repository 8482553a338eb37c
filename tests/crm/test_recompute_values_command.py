"""`manage.py recompute_values`: the nightly value recompute by hand, with the same run record,
a summary whose numbers are the database's, and exit 1 with the reason when it fails."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from crm.models import CustomerValue, RecomputeRun, ScoringScheme
from crm.services import RECOMPUTE_STEPS
from tests.factories.crm import CustomerFactory, paid_order

pytestmark = pytest.mark.django_db


def recompute(*args: str) -> str:
    out = io.StringIO()
    call_command("recompute_values", "--no-progress", *args, stdout=out)
    return out.getvalue()


def shop() -> None:
    now = timezone.now()
    for days, amount in ((1, "300.00"), (3, "20.00"), (40, "75.50"), (200, "5.00")):
        paid_order(CustomerFactory(), amount, now - timedelta(days=days))
    CustomerFactory()  # no orders


def test_the_summary_gives_each_step_and_counts_that_match_the_database():
    shop()
    text = recompute()
    run = RecomputeRun.objects.get()
    assert run.status == "done" and run.scheme.name == "Default"
    assert f"Value recompute run {run.pk}: done in " in text
    for step in RECOMPUTE_STEPS:
        assert re.search(rf"^  {step}\s+\d+\.\d{{3}} s$", text, re.M), step
    counts = re.search(r"Profiles (\d+), customers (\d+), changes (\d+)", text)
    assert int(counts[1]) == CustomerValue.objects.count() == 5
    assert int(counts[2]) == CustomerValue.objects.filter(frequency__isnull=False).count() == 4
    assert int(counts[3]) == run.changes
    tiers = dict(re.findall(r"(\S+) (\d+)", text.split("Tiers: ")[1].splitlines()[0]))
    for slug, n in tiers.items():
        stored = CustomerValue.objects.filter(**({"tier__isnull": True} if slug == "(none)" else {"tier__slug": slug}))
        assert stored.count() == int(n), slug
    assert sum(int(n) for n in tiers.values()) == 5


def test_a_scheme_is_chosen_by_name_or_id():
    shop()
    wide = ScoringScheme.objects.create(name="Two years", window_days=730, is_active=False)
    recompute("--scheme", "Two years")
    recompute("--scheme", str(wide.pk))
    assert [r.scheme_id for r in RecomputeRun.objects.order_by("pk")] == [wide.pk, wide.pk]
    assert RecomputeRun.objects.filter(window_days=730).count() == 2
    with pytest.raises(CommandError, match="No scoring scheme 'nope'"):
        recompute("--scheme", "nope")


def test_a_failing_run_exits_1_with_the_reason_and_is_recorded_failed():
    ScoringScheme.objects.update(is_active=False)
    with pytest.raises(CommandError) as caught:
        recompute()
    run = RecomputeRun.objects.get()
    assert caught.value.returncode == 1
    assert str(caught.value) == f"Value recompute run {run.pk} failed: NoActiveScheme: " + (
        "no active scoring scheme: mark one active in the admin"
    )
    assert run.status == "failed" and run.error.startswith("NoActiveScheme")
