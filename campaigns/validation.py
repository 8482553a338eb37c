"""Whether a campaign's configuration can work: each rule once, for the API's create, the admin
form (`Campaign.clean`) and the launch, so an operator learns the field and the reason at once
rather than from a worker that fails later.

Every check answers with `{field: reason}`; an empty dict means nothing to refuse.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from decimal import Decimal

from celery.schedules import crontab
from croniter import CroniterBadCronError, CroniterBadDateError, croniter
from django.utils import timezone
from django.utils.translation import gettext

from campaigns.models import AllocationKind, Campaign, ChannelKind, ScheduleKind, Segment
from campaigns.segments import DefinitionError, compile_definition
from materials.models import MaterialVersion, VersionStatus

# The shapes an experiment can take: a holdout and a pilot of at most 90% each, and between them
# something left to send to.
MAX_HOLDOUT_PERCENT = Decimal(90)
MAX_PILOT_PERCENT = Decimal(90)
MIN_VARIANTS, MAX_VARIANTS = 1, 8
# Group names the results use for themselves.
RESERVED_VARIANT_NAMES = frozenset({"holdout", "rollout"})
# A schedule with no run in this many years is a mistake (Feb 31, Apr 31), not a plan.
CRON_HORIZON_YEARS = 5
CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")

# The bandit moves shares between runs or arrivals; a one-off send assigns everyone at once.
BANDIT_SCHEDULES = (ScheduleKind.CRON, ScheduleKind.TRIGGER)
MAX_BANDIT_INTERVAL_MINUTES = 60 * 24 * 30

Problems = dict[str, str]
# Checks that apps above add to the launch (a journey launches from its own page, say).
_launch_checks: list[Callable[[Campaign], Problems]] = []


def register_launch_check(check: Callable[[Campaign], Problems]) -> None:
    if check not in _launch_checks:
        _launch_checks.append(check)


def share_problems(holdout_percent: Decimal | float | None, pilot_percent: Decimal | float | None) -> Problems:
    holdout, pilot = Decimal(str(holdout_percent or 0)), Decimal(str(pilot_percent or 0))
    problems: Problems = {}
    if not 0 <= holdout <= MAX_HOLDOUT_PERCENT:
        problems["holdout_percent"] = gettext("The holdout is 0 to %(max)s%% of the audience.") % {
            "max": MAX_HOLDOUT_PERCENT
        }
    if not 0 <= pilot <= MAX_PILOT_PERCENT:
        problems["pilot_percent"] = gettext("The pilot is 0 to %(max)s%% of the audience.") % {"max": MAX_PILOT_PERCENT}
    elif holdout + pilot >= 100:
        problems["pilot_percent"] = gettext(
            "Holdout and pilot together must stay below 100%% (here %(sum)s%%): nobody would be left for the roll-out."
        ) % {"sum": holdout + pilot}
    return problems


def variant_problems(variants: Iterable[tuple[str, int]]) -> Problems:
    """`variants` as (name, weight) pairs, in order."""
    variants = list(variants)
    names = [name for name, _weight in variants]
    if not MIN_VARIANTS <= len(variants) <= MAX_VARIANTS:
        return {
            "variants": gettext("A campaign has %(min)d to %(max)d variants; this one has %(n)d.")
            % {"min": MIN_VARIANTS, "max": MAX_VARIANTS, "n": len(variants)}
        }
    reserved = sorted(RESERVED_VARIANT_NAMES & set(names))
    if reserved:
        return {
            "variants": gettext("%(names)s names a group of the results; call the variant otherwise.")
            % {"names": ", ".join(reserved)}
        }
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        return {
            "variants": gettext("Variant names must be unique; repeated: %(names)s.") % {"names": ", ".join(repeated)}
        }
    if sum(weight for _name, weight in variants) <= 0:
        return {
            "variants": gettext("The variants' weights sum to 0, so no variant could be picked; give one a weight.")
        }
    return {}


def allocation_problems(
    *,
    allocation: str,
    schedule_kind: str,
    holdout_percent: Decimal | float | None,
    floor_percent: Decimal | float | None,
    interval_minutes: int | None,
    margin_percent: Decimal | float | None,
    variant_count: int | None,
) -> Problems:
    """A bandit needs a schedule that keeps assigning newcomers, a floor every variant can have
    beside the holdout, an interval and a margin; a fixed split needs none of these."""
    if allocation not in AllocationKind.values:
        return {"allocation": gettext("One of %(values)s.") % {"values": ", ".join(AllocationKind.values)}}
    if allocation == AllocationKind.FIXED:
        return {}
    problems: Problems = {}
    if schedule_kind not in BANDIT_SCHEDULES:
        problems["allocation"] = gettext(
            "A bandit applies to recurring (cron) and triggered campaigns only: a one-off send assigns its whole "
            "audience at once, before any result could move the shares."
        )
    elif variant_count is not None and variant_count < 2:
        problems["allocation"] = gettext("A bandit chooses between variants: give it at least two.")
    holdout, floor = Decimal(str(holdout_percent or 0)), Decimal(str(floor_percent or 0))
    if floor <= 0:
        problems["bandit_floor_percent"] = gettext(
            "Above 0: a variant without traffic would never be learned about again."
        )
    elif variant_count and holdout + floor * variant_count > 100:
        problems["bandit_floor_percent"] = gettext(
            "%(n)d variants at %(floor)s%% each and a %(holdout)s%% holdout exceed 100%%; lower the floor to at "
            "most %(most)s%%."
        ) % {
            "n": variant_count,
            "floor": floor,
            "holdout": holdout,
            "most": ((100 - holdout) / variant_count).quantize(Decimal("0.01"), rounding="ROUND_DOWN"),
        }
    if interval_minutes is None or not 1 <= interval_minutes <= MAX_BANDIT_INTERVAL_MINUTES:
        problems["bandit_interval_minutes"] = gettext("1 to %(max)d minutes.") % {"max": MAX_BANDIT_INTERVAL_MINUTES}
    margin = Decimal(str(margin_percent)) if margin_percent is not None else Decimal(-1)
    if not 0 < margin <= 100:
        problems["margin_percent"] = gettext("The share of an order's amount that is margin: above 0 and at most 100.")
    return problems


def celery_cron(expression: str) -> str:
    """The expression as celery beat reads it, spelled in plain numbers (`mon/2`, `monday`,
    `january` expanded to the days and months celery means), so that croniter, which spells some
    of these otherwise, computes the very times beat fires. ValueError if celery refuses it."""
    parts = expression.split()
    if len(parts) != len(CRON_FIELDS):
        raise ValueError("Five fields expected: m h dom mon dow.")
    try:
        schedule = crontab(**dict(zip(CRON_FIELDS, parts, strict=True)))
    except (KeyError, TypeError) as exc:
        raise ValueError(str(exc)) from exc
    sets = (schedule.minute, schedule.hour, schedule.day_of_month, schedule.month_of_year, schedule.day_of_week)
    return " ".join(",".join(str(v) for v in sorted(values)) for values in sets)


def cron_problem(expression: str, *, now: dt.datetime | None = None) -> str | None:
    """Why a five-field cron (m h dom mon dow, UTC) cannot schedule a campaign, else None.

    Celery beat runs it, so celery's parser decides what is well-formed and what it means;
    croniter, given celery's reading (numbers, and a day of the month together with a day of the
    week both having to match), finds the next run."""
    try:
        plain = celery_cron(expression)
    except ValueError as exc:
        return gettext("Invalid cron expression: %(error)s") % {"error": exc}
    start = now or timezone.now()
    try:
        croniter(plain, start, day_or=False, max_years_between_matches=CRON_HORIZON_YEARS).get_next(dt.datetime)
    except CroniterBadDateError:
        return gettext("%(expression)r never fires: no such date in the next %(years)d years.") % {
            "expression": expression,
            "years": CRON_HORIZON_YEARS,
        }
    except (CroniterBadCronError, ValueError, KeyError) as exc:
        return gettext("Invalid cron expression: %(error)s") % {"error": exc}
    return None


def segment_problem(segment_id: int | None) -> str | None:
    """Why this segment cannot be an audience: gone, or its definition no longer compiles."""
    segment = Segment.objects.filter(pk=segment_id).first() if segment_id else None
    if segment is None:
        return gettext("No segment %(id)s: it was deleted or never existed.") % {"id": segment_id}
    try:
        compile_definition(segment.definition)
    except DefinitionError as exc:
        return gettext("The definition of segment %(id)s (%(name)s) no longer compiles: %(error)s") % {
            "id": segment.pk,
            "name": segment.name,
            "error": exc,
        }
    return None


def channel_problem(kind: str, *, must_be_ready: bool) -> str | None:
    """An unknown channel; with `must_be_ready`, also one switched off or without a gateway."""
    if kind not in ChannelKind.values:
        return gettext("Unknown channel %(kind)r; one of %(kinds)s.") % {
            "kind": kind,
            "kinds": ", ".join(ChannelKind.values),
        }
    if not must_be_ready:
        return None
    # The configuration read the sending code itself uses (imported here: services imports us).
    from campaigns import channels, services

    if kind != ChannelKind.EMAIL and not channels.channel_config(kind).enabled:
        return gettext("The %(kind)s channel is disabled (Campaigns > Channels).") % {"kind": kind}
    if not services.channel_is_configured(kind):
        return gettext("The %(kind)s channel has no gateway URL configured.") % {"kind": kind}
    return None


def material_problems(channel: str, variants: Iterable[tuple[str, int | None]], *, must_be_approved: bool) -> Problems:
    """Variants (name, material version id) whose material is for another channel, gone, or (at
    launch) not approved yet: an unapproved wording never goes out."""
    variants = [(name, pk) for name, pk in variants if pk]
    if not variants:
        return {}
    versions = {
        v.pk: v for v in MaterialVersion.objects.select_related("material").filter(pk__in=[pk for _n, pk in variants])
    }
    reasons = []
    for name, pk in variants:
        version = versions.get(pk)
        if version is None:
            reasons.append(gettext("variant %(name)s: no material version %(id)s") % {"name": name, "id": pk})
        elif version.material.channel != channel:
            reasons.append(
                gettext("variant %(name)s: %(version)s is a %(material_channel)s material, not %(channel)s")
                % {"name": name, "version": version, "material_channel": version.material.channel, "channel": channel}
            )
        elif must_be_approved and version.status != VersionStatus.APPROVED:
            reasons.append(
                gettext("variant %(name)s: %(version)s is a draft; an Operations lead approves it before launch")
                % {"name": name, "version": version}
            )
    return {"variants": "; ".join(reasons) + "."} if reasons else {}


def schedule_problems(campaign: Campaign) -> Problems:
    if campaign.schedule_kind == ScheduleKind.CRON:
        problem = cron_problem(campaign.cron)
        return {"cron": problem} if problem else {}
    return {}


def campaign_allocation_problems(campaign: Campaign, *, variant_count: int | None) -> Problems:
    return allocation_problems(
        allocation=campaign.allocation,
        schedule_kind=campaign.schedule_kind,
        holdout_percent=campaign.holdout_percent,
        floor_percent=campaign.bandit_floor_percent,
        interval_minutes=campaign.bandit_interval_minutes,
        margin_percent=campaign.margin_percent,
        variant_count=variant_count,
    )


def configuration_problems(campaign: Campaign) -> Problems:
    """What the admin form refuses on the campaign row itself (variants are an inline of their own)."""
    problems = share_problems(campaign.holdout_percent, campaign.pilot_percent)
    problems.update(schedule_problems(campaign))
    # Variants are an inline saved after this row: a new campaign's count is not known yet (the
    # launch checks it).
    count = campaign.variants.count() if campaign.pk else None
    problems.update(campaign_allocation_problems(campaign, variant_count=count))
    if campaign.segment_id is not None and (problem := segment_problem(campaign.segment_id)):
        problems["segment"] = problem
    if campaign.channel and (problem := channel_problem(campaign.channel, must_be_ready=False)):
        problems["channel"] = problem
    return problems


def launch_problems(campaign: Campaign, *, without: Iterable[Callable[[Campaign], Problems]] = ()) -> Problems:
    """`{field: reason}` for a draft that can no longer work as configured: its segment deleted or
    no longer compiling, its channel unknown, switched off or without a gateway, a cron that never
    fires, variants whose weights sum to 0 (or none at all), shares that leave nobody to send to."""
    problems = share_problems(campaign.holdout_percent, campaign.pilot_percent)
    problems.update(schedule_problems(campaign))
    if problem := segment_problem(campaign.segment_id):
        problems["segment"] = problem
    if problem := channel_problem(campaign.channel, must_be_ready=True):
        problems["channel"] = problem
    rows = list(campaign.variants.all())
    variants = [(v.name, v.weight) for v in rows]
    problems.update(variant_problems(variants))
    if "variants" not in problems:
        problems.update(
            material_problems(campaign.channel, [(v.name, v.material_version_id) for v in rows], must_be_approved=True)
        )
    problems.update(campaign_allocation_problems(campaign, variant_count=len(variants)))
    skipped = set(without)  # an app launching the campaign its own way leaves out its own refusal
    for check in _launch_checks:
        if check not in skipped:
            problems.update(check(campaign))
    return problems
