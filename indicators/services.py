"""Writes of the indicators layer: goals set on registered indicators and spread over their months.
(The rollups write themselves: `indicators.rollups`.)"""

from __future__ import annotations

import calendar
import logging
from datetime import UTC, date, datetime, time
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

import requests
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import gettext

from access.services import record_audit
from config.celery import publish
from config.failures import log_failure
from config.outbound import host_allowed
from indicators.errors import (
    AlertNotFound,
    AlreadyAcknowledged,
    AnomalyCheckNotFound,
    CheckNotFailed,
    GoalExists,
    NoHistory,
)
from indicators.models import (
    AlertStatus,
    Anomaly,
    AnomalyCheckRun,
    CheckKind,
    Goal,
    GoalMonth,
    GoalProfile,
    IndicatorWatch,
    NotifyStatus,
    Sensitivity,
    goal_step,
)
from indicators.registry import (
    Fold,
    Indicator,
    UnknownIndicator,
    all_indicators,
    daily_values,
    fold_days,
    get_indicator,
    value_text,
)

# Setting a goal on a registered indicator and spreading it over its months. The rules of the
# month targets (they add up for a sum-type indicator, they are levels for a mean- or last-type
# one) are in `indicators.models.Goal`; the database checks them again at commit.


def _days_in(month: date) -> int:
    return calendar.monthrange(month.year, month.month)[1]


def decompose(
    *, target: Decimal, fold: str, months: list[date], weights: list[Decimal], step: Decimal
) -> list[Decimal]:
    """Month targets for `target` spread by `weights` (one per month, at least one > 0).

    - sum: the target is shared in proportion to the weights; each share is rounded down to the
      step and the steps left over go to the months with the largest remainders (the earlier month
      on a tie), so the months add up to the target exactly;
    - mean: each month's level is proportional to its weight, scaled so that the mean of the
      months weighted by their days (the period's mean of days) is the target;
    - last: the levels are scaled so that the last month's level is the target.
    """
    if fold == Fold.SUM:
        total = sum(weights, Decimal(0))
        raw = [target * w / total for w in weights]
        floors = [(r / step).to_integral_value(rounding=ROUND_FLOOR) * step for r in raw]
        left = int(((target - sum(floors, Decimal(0))) / step).to_integral_value())
        by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - floors[i]), i))
        for i in by_remainder[:left]:
            floors[i] += step
        return floors
    if fold == Fold.MEAN:
        days = [_days_in(m) for m in months]
        scale = target * sum(days) / sum((w * d for w, d in zip(weights, days, strict=True)), Decimal(0))
    elif fold == Fold.LAST:
        scale = target / weights[-1]
    else:
        raise ValueError(f"unknown fold {fold!r}")
    levels = [(w * scale).quantize(step, rounding=ROUND_HALF_EVEN) for w in weights]
    if fold == Fold.LAST:
        levels[-1] = target  # exact, whatever the rounding of the scale
    return levels


def _check_weights(weights: list[Any], *, months: list[date], fold: str, field: str) -> list[Decimal]:
    if not isinstance(weights, list | tuple) or len(weights) != len(months):
        raise ValidationError(
            {field: gettext("Give one weight per month of the period: %(n)s numbers.") % {"n": len(months)}}
        )
    clean = []
    for position, raw in enumerate(weights, start=1):
        try:
            value = Decimal(str(raw))
        except (InvalidOperation, ValueError):
            raise ValidationError(
                {
                    field: gettext("Weight %(position)s (%(value)s) is not a number.")
                    % {"position": position, "value": repr(str(raw)[:20])}
                }
            ) from None
        if not value.is_finite() or value < 0 or value > Decimal("1e12"):
            raise ValidationError(
                {field: gettext("Weight %(position)s must be a number from 0 to 10^12.") % {"position": position}}
            )
        clean.append(value)
    if not any(clean):
        raise ValidationError({field: gettext("At least one weight must be greater than zero.")})
    if fold == Fold.LAST and clean[-1] == 0:
        raise ValidationError(
            {field: "The indicator is read on the period's last day, so the last month's weight cannot be 0."}
        )
    return clean


def _last_year_weights(*, indicator: Indicator, months: list[date]) -> list[Decimal]:
    """Last year's actual of each month, folded as the indicator says (one read of the series)."""
    before = [m.replace(year=m.year - 1) for m in months]
    start = before[0]
    end = before[-1].replace(day=_days_in(before[-1]))
    by_month: dict[date, list[Decimal]] = {m: [] for m in before}
    for day, value in daily_values(indicator.key, start=start, end=end):
        by_month[day.replace(day=1)].append(value)
    weights = [max(fold_days(indicator.fold, by_month[m]), Decimal(0)) for m in before]
    if not any(weights):
        raise NoHistory(
            gettext("%(indicator)s has no actuals from %(start)s to %(end)s to shape the goal on.")
            % {"indicator": indicator.label, "start": start, "end": end},
            indicator=indicator.key,
        )
    if indicator.fold == Fold.LAST and weights[-1] == 0:
        raise NoHistory(
            gettext("%(indicator)s was 0 at the end of %(month)s: nothing to scale the goal to.")
            % {"indicator": indicator.label, "month": date_format(end, "YEAR_MONTH_FORMAT")}
        )
    return weights


def month_targets_for(*, goal: Goal, profile: str, weights: list[Any] | None = None) -> list[GoalMonth]:
    """The months `goal` would get with that profile, unsaved (the admin previews and checks
    them before saving); raises ValidationError or NoHistory as the services would."""
    return _month_rows(goal=goal, profile=profile, weights=weights)[0]


def _month_rows(*, goal: Goal, profile: str, weights: list[Any] | None) -> tuple[list[GoalMonth], list[str]]:
    months = goal.months()
    indicator = get_indicator(goal.indicator)
    typed: list[str] = []
    if profile == GoalProfile.EVEN:
        shape = [Decimal(1)] * len(months)
    elif profile == GoalProfile.WEIGHTS:
        shape = _check_weights(weights or [], months=months, fold=goal.fold, field="weights")
        typed = [str(w) for w in shape]
    elif profile == GoalProfile.LAST_YEAR:
        shape = _last_year_weights(indicator=indicator, months=months)
    else:
        raise ValidationError(
            {
                "profile": gettext("Unknown profile %(profile)s; one of %(known)s.")
                % {"profile": repr(str(profile)[:20]), "known": GoalProfile.values}
            }
        )
    targets = decompose(target=goal.target, fold=goal.fold, months=months, weights=shape, step=goal_step(goal.unit))
    total = sum(shape, Decimal(0))
    rows = [
        GoalMonth(goal=goal, month=m, weight=(w / total).quantize(Decimal("0.000001")), target=t)
        for m, w, t in zip(months, shape, targets, strict=True)
    ]
    return rows, typed


def _check_target(target: Any, *, unit: str) -> Decimal:
    step = goal_step(unit)
    try:
        value = Decimal(str(target))
    except (InvalidOperation, ValueError):
        raise ValidationError({"target": gettext("Must be a number.")}) from None
    if not value.is_finite() or value <= 0:
        raise ValidationError({"target": gettext("Must be greater than zero.")})
    if value >= Decimal("1e15"):
        raise ValidationError({"target": gettext("Must be below 10^15.")})
    if value != value.quantize(step):
        raise ValidationError(
            {
                "target": gettext("At most %(places)s decimal places for this indicator.")
                % {"places": -step.as_tuple().exponent}
            }
        )
    return value.quantize(step)


def _indicator_or_400(key: Any) -> Indicator:
    try:
        return get_indicator(str(key))
    except UnknownIndicator:
        known = ", ".join(i.key for i in all_indicators()) or "none registered"
        raise ValidationError(
            {
                "indicator": gettext("Unknown indicator %(key)s; known: %(known)s.")
                % {"key": repr(str(key)[:64]), "known": known}
            }
        ) from None


@transaction.atomic
def create_goal(
    *,
    name: str,
    indicator: str,
    period: str,
    year: int,
    target: Decimal,
    quarter: int | None = None,
    profile: str = GoalProfile.EVEN,
    weights: list[Any] | None = None,
    actor: AbstractBaseUser | None = None,
    api_key: Any = None,
) -> Goal:
    """Set a yearly or quarterly target on an indicator and spread it over the months."""
    found = _indicator_or_400(indicator)
    goal = Goal(
        name=name,
        indicator=found.key,
        fold=found.fold,
        unit=found.unit,
        period=period,
        year=year,
        quarter=quarter,
        target=_check_target(target, unit=found.unit),
        profile=profile,
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
    )
    goal.full_clean(validate_unique=False, validate_constraints=False)
    try:
        with transaction.atomic():
            goal.save()
    except IntegrityError as exc:
        if "goal_one_per_period" in str(exc):
            raise GoalExists(
                f"{found.label} already has a goal for {goal.period_label}; change that one instead."
            ) from None
        raise
    rows, typed = _month_rows(goal=goal, profile=profile, weights=weights)
    GoalMonth.objects.bulk_create(rows)
    if typed:
        Goal.objects.filter(pk=goal.pk).update(weights=typed)
        goal.weights = typed
    record_audit(
        actor=actor,
        api_key=api_key,
        action="indicators.goal_created",
        obj=goal,
        details={
            "indicator": goal.indicator,
            "period": goal.period_label,
            "target": str(goal.target),
            "profile": profile,
        },
    )
    return goal


@transaction.atomic
def redecompose_goal(
    *,
    goal: Goal,
    profile: str,
    weights: list[Any] | None = None,
    target: Decimal | None = None,
    name: str | None = None,
    actor: AbstractBaseUser | None = None,
    api_key: Any = None,
) -> Goal:
    """Spread the goal again (another profile, other weights, or a new target); the months are
    replaced in the same transaction, so nobody ever reads half a decomposition."""
    locked = Goal.objects.select_for_update().get(pk=goal.pk)
    _indicator_or_400(locked.indicator)
    before = {"target": str(locked.target), "profile": locked.profile, "weights": locked.weights}
    if target is not None:
        locked.target = _check_target(target, unit=locked.unit)
    if name is not None:
        locked.name = name
    locked.profile = profile
    rows, typed = _month_rows(goal=locked, profile=profile, weights=weights)
    locked.weights = typed
    locked.full_clean(validate_unique=False, validate_constraints=False)
    locked.save()
    GoalMonth.objects.filter(goal=locked).delete()
    GoalMonth.objects.bulk_create(rows)
    record_audit(
        actor=actor,
        api_key=api_key,
        action="indicators.goal_redecomposed",
        obj=locked,
        details={"before": before, "after": {"target": str(locked.target), "profile": profile, "weights": typed}},
    )
    return locked


@transaction.atomic
def delete_goal(*, goal: Goal, actor: AbstractBaseUser | None = None, api_key: Any = None) -> None:
    record_audit(
        actor=actor,
        api_key=api_key,
        action="indicators.goal_deleted",
        obj=goal,
        details={"indicator": goal.indicator, "period": goal.period_label, "target": str(goal.target)},
    )
    goal.delete()


# --- anomaly alerts ------------------------------------------------------------------------------
# The checks themselves are in `indicators.anomalies`; here are the operator's actions and the
# sending of an alert.

logger = logging.getLogger(__name__)


def _check_period(kind: str, at: datetime) -> datetime:
    at = at.astimezone(UTC)
    if kind == CheckKind.DAILY:
        return datetime.combine(at.date(), time.min, tzinfo=UTC)
    return at.replace(minute=0, second=0, microsecond=0)


@transaction.atomic
def request_anomaly_check(
    *, kind: str, period_start: datetime, actor: AbstractBaseUser | None = None
) -> AnomalyCheckRun:
    """Queue the check of one day (every indicator) or one hour (event volume); asking twice for
    the same period returns the first run (the beat and an operator may both ask)."""
    from indicators import tasks  # tasks import services

    if kind not in CheckKind.values:
        raise ValidationError({"kind": gettext("One of %(values)s.") % {"values": CheckKind.values}})
    run, created = AnomalyCheckRun.objects.get_or_create(kind=kind, period_start=_check_period(kind, period_start))
    if created:
        record_audit(
            actor=actor,
            action="indicators.anomaly_check_requested",
            obj=run,
            details={"kind": kind, "period_start": run.period_start.isoformat()},
        )
        transaction.on_commit(
            lambda: publish(f"anomaly check run {run.pk}", tasks.run_anomaly_check, kwargs={"run_id": run.pk})
        )
    return run


@transaction.atomic
def retry_anomaly_check(*, run_id: int, actor: AbstractBaseUser | None = None, api_key: Any = None) -> AnomalyCheckRun:
    """Queue a failed check again; its failed transaction wrote no alert."""
    from indicators import tasks

    run = AnomalyCheckRun.objects.select_for_update().filter(pk=run_id).first()
    if run is None:
        raise AnomalyCheckNotFound(f"No anomaly check run {run_id}.")
    if run.status != AnomalyCheckRun.Status.FAILED:
        raise CheckNotFailed(f"Anomaly check run {run_id} is {run.status}: only a failed run is retried.")
    previous = run.error
    run.status, run.error, run.started_at, run.finished_at = AnomalyCheckRun.Status.QUEUED, "", None, None
    run.save(update_fields=["status", "error", "started_at", "finished_at"])
    record_audit(
        actor=actor,
        api_key=api_key,
        action="indicators.anomaly_check_retried",
        obj=run,
        details={"previous_error": previous},
    )
    transaction.on_commit(
        lambda: publish(f"anomaly check run {run.pk}", tasks.run_anomaly_check, kwargs={"run_id": run.pk})
    )
    return run


@transaction.atomic
def acknowledge_alert(
    *, alert_id: int, note: str = "", actor: AbstractBaseUser | None = None, api_key: Any = None
) -> Anomaly:
    """Mark an alert seen (and say why it moved); an alert is acknowledged once."""
    alert = Anomaly.objects.select_for_update().filter(pk=alert_id).first()
    if alert is None:
        raise AlertNotFound(f"No alert {alert_id}.")
    if alert.status == AlertStatus.ACKNOWLEDGED:
        raise AlreadyAcknowledged(f"Alert {alert_id} was acknowledged at {alert.acknowledged_at:%Y-%m-%d %H:%M} UTC.")
    alert.status = AlertStatus.ACKNOWLEDGED
    alert.acknowledged_at = timezone.now()
    alert.acknowledged_by = actor if getattr(actor, "is_authenticated", False) else None
    alert.note = str(note)[:2000]
    alert.save(update_fields=["status", "acknowledged_at", "acknowledged_by", "note"])
    record_audit(
        actor=actor, api_key=api_key, action="indicators.alert_acknowledged", obj=alert, details={"note": alert.note}
    )
    return alert


def watched_keys() -> list[str]:
    """What an operator may mute or tune: every registered indicator and the hourly event volume."""
    return [i.key for i in all_indicators()] + ["event_volume"]


@transaction.atomic
def set_indicator_watch(
    *,
    indicator: str,
    muted: bool | None = None,
    sensitivity: str | None = None,
    actor: AbstractBaseUser | None = None,
    api_key: Any = None,
) -> IndicatorWatch:
    """Mute (or unmute) an indicator's checks, or set their sensitivity."""
    if indicator not in watched_keys():
        raise ValidationError(
            {"indicator": f"Unknown indicator {str(indicator)[:64]!r}; known: {', '.join(watched_keys())}."}
        )
    if sensitivity is not None and sensitivity not in Sensitivity.values:
        raise ValidationError({"sensitivity": gettext("One of %(values)s.") % {"values": Sensitivity.values}})
    watch, _ = IndicatorWatch.objects.select_for_update().get_or_create(indicator=indicator)
    before = {"muted": watch.muted, "sensitivity": watch.sensitivity}
    if muted is not None:
        watch.muted = bool(muted)
    if sensitivity is not None:
        watch.sensitivity = sensitivity
    watch.updated_by = actor if getattr(actor, "is_authenticated", False) else None
    watch.save()
    record_audit(
        actor=actor,
        api_key=api_key,
        action="indicators.watch_changed",
        obj=watch,
        details={"before": before, "after": {"muted": watch.muted, "sensitivity": watch.sensitivity}},
    )
    return watch


def alert_text(alert: Anomaly) -> tuple[str, str]:
    """Subject and body of an alert's e-mail."""
    when = (
        f"{alert.period_start:%Y-%m-%d}"
        if alert.granularity == CheckKind.DAILY
        else f"{alert.period_start:%Y-%m-%d %H:00} UTC"
    )
    value, low, high, expected = (_shown(alert, v) for v in (alert.value, alert.low, alert.high, alert.expected))
    subject = f"[opsloop] {alert.indicator} {alert.direction} on {when}: {value} (expected {low} to {high})"
    lines = [
        f"Indicator: {alert.indicator}",
        f"When: {when}",
        f"Value: {value}",
        f"Expected: {expected} (range {low} to {high})",
        f"Distance: {alert.score} robust standard deviations",
        "",
        "Traffic sources that moved most:",
    ]
    for mover in alert.movers or []:
        lines.append(
            f"- {mover['source']}: {mover['measure']} {mover['value']} against {mover['usual']} usually "
            f"({mover['change']})"
        )
    if not alert.movers:
        lines.append("- none recorded")
    return subject, "\n".join(lines)


def _shown(alert: Anomaly, value: Decimal) -> str:
    """A value of the alert as the dashboards show the indicator's values."""
    try:
        unit = get_indicator(alert.indicator).unit
    except UnknownIndicator:
        unit = "count"
    return value_text(value, unit)


def alert_payload(alert: Anomaly) -> dict[str, Any]:
    """The webhook's JSON body."""
    return {
        "alert": alert.pk,
        "indicator": alert.indicator,
        "granularity": alert.granularity,
        "period_start": alert.period_start.isoformat(),
        "value": _shown(alert, alert.value),
        "expected": _shown(alert, alert.expected),
        "low": _shown(alert, alert.low),
        "high": _shown(alert, alert.high),
        "direction": alert.direction,
        "score": alert.score,
        "movers": alert.movers,
    }


def alert_emails() -> list[str]:
    """The deployment's alert addresses, then the active ones kept in the admin (each once)."""
    from indicators.models import AlertRecipient

    kept = AlertRecipient.objects.filter(kind=AlertRecipient.Kind.EMAIL, active=True)
    kept = kept.values_list("address", flat=True)
    return list(dict.fromkeys([*settings.OPSLOOP_ALERT_EMAILS, *kept]))


def alert_webhooks() -> list[str]:
    """The deployment's alert webhook, then the active ones kept in the admin (each once)."""
    from indicators.models import AlertRecipient

    kept = AlertRecipient.objects.filter(kind=AlertRecipient.Kind.WEBHOOK, active=True)
    kept = kept.values_list("address", flat=True)
    return list(dict.fromkeys([u for u in [settings.OPSLOOP_ALERT_WEBHOOK_URL, *kept] if u]))


def webhook_host_allowed(url: str) -> bool:
    """An operator's webhook may reach only the hosts the deployment allows (the channel gateways'
    list, or the host of the deployment's own alert webhook)."""
    return host_allowed(url, deployment_urls=[settings.OPSLOOP_ALERT_WEBHOOK_URL])


def recipient_problems(*, kind: str, address: str) -> dict[str, str]:
    """What is wrong with an alert recipient, by field (empty when it may be saved)."""
    from django.core.validators import EmailValidator, URLValidator

    from indicators.models import AlertRecipient

    if kind not in AlertRecipient.Kind.values:
        return {"kind": gettext("One of %(values)s.") % {"values": AlertRecipient.Kind.values}}
    address = (address or "").strip()
    try:
        if kind == AlertRecipient.Kind.EMAIL:
            EmailValidator(message=gettext("Not an e-mail address."))(address)
        else:
            URLValidator(schemes=["http", "https"], message=gettext("Not an http(s) URL."))(address)
    except ValidationError as exc:
        return {"address": exc.messages[0]}
    if kind == AlertRecipient.Kind.WEBHOOK and not webhook_host_allowed(address):
        return {
            "address": gettext(
                "This host is not one the deployment allows for webhooks "
                "(OPSLOOP_GATEWAY_ALLOWED_HOSTS, or the host of OPSLOOP_ALERT_WEBHOOK_URL)."
            )
        }
    return {}


@transaction.atomic
def save_alert_recipient(
    *,
    recipient_id: int | None = None,
    kind: str,
    address: str,
    active: bool = True,
    actor: AbstractBaseUser | None = None,
    api_key: Any = None,
):
    """Add an alert recipient, or change one; refused by field when the address is not valid."""
    from indicators.models import AlertRecipient

    if problems := recipient_problems(kind=kind, address=address):
        raise ValidationError(problems)
    address = address.strip()
    clash = AlertRecipient.objects.filter(kind=kind, address=address).exclude(pk=recipient_id)
    if clash.exists():
        raise ValidationError({"address": gettext("This recipient is already on the list.")})
    if recipient_id is None:
        recipient = AlertRecipient.objects.create(
            kind=kind,
            address=address,
            active=active,
            created_by=actor if getattr(actor, "is_authenticated", False) else None,
        )
        action, before = "indicators.alert_recipient_added", None
    else:
        recipient = AlertRecipient.objects.select_for_update().get(pk=recipient_id)
        before = {"kind": recipient.kind, "address": recipient.address, "active": recipient.active}
        recipient.kind, recipient.address, recipient.active = kind, address, active
        recipient.save(update_fields=["kind", "address", "active"])
        action = "indicators.alert_recipient_changed"
    record_audit(
        actor=actor,
        api_key=api_key,
        action=action,
        obj=recipient,
        details={"before": before, "after": {"kind": kind, "address": address, "active": active}},
    )
    return recipient


def notify_alert(*, alert_id: int) -> Anomaly | None:
    """Send an alert by e-mail and to the webhook, each channel still pending once: a channel that
    fails is marked failed with the reason (and logged) and left for an operator's resend; a
    redelivered task sends nothing twice. Raises nothing: the alert shows what happened."""
    alert = Anomaly.objects.filter(pk=alert_id).first()
    if alert is None:
        return None
    errors = []
    if alert.email_status == NotifyStatus.PENDING:
        subject, body = alert_text(alert)
        try:
            send_mail(subject, body, None, alert_emails(), fail_silently=False)
            status = NotifyStatus.SENT
        except Exception as exc:
            status = NotifyStatus.FAILED
            errors.append("e-mail: " + log_failure(logger, f"e-mail of anomaly alert {alert.pk}", exc))
        Anomaly.objects.filter(pk=alert.pk).update(email_status=status)
    if alert.webhook_status == NotifyStatus.PENDING:
        try:
            # Every webhook gets the alert; the idempotency key lets one that already has it from
            # an earlier try (a resend after another webhook failed) keep just one copy.
            failed: list[Exception] = []
            for url in alert_webhooks():
                if url != settings.OPSLOOP_ALERT_WEBHOOK_URL and not webhook_host_allowed(url):
                    failed.append(ValueError(f"{url}: the host is no longer allowed"))
                    continue
                try:
                    response = requests.post(
                        url,
                        json=alert_payload(alert),
                        timeout=settings.OPSLOOP_ALERT_WEBHOOK_TIMEOUT,
                        headers={"Idempotency-Key": f"opsloop-alert-{alert.pk}"},
                    )
                    response.raise_for_status()
                except requests.RequestException as exc:
                    failed.append(exc)
            if len(failed) == 1:
                raise failed[0]
            if failed:
                raise RuntimeError("; ".join(f"{type(e).__name__}: {e}" for e in failed))
            status = NotifyStatus.SENT
        except Exception as exc:
            status = NotifyStatus.FAILED
            errors.append("webhook: " + log_failure(logger, f"webhook of anomaly alert {alert.pk}", exc))
        Anomaly.objects.filter(pk=alert.pk).update(webhook_status=status)
    if errors:
        Anomaly.objects.filter(pk=alert.pk).update(notify_error="; ".join(errors)[:2000])
    alert.refresh_from_db()
    return alert


@transaction.atomic
def resend_alert(*, alert_id: int, actor: AbstractBaseUser | None = None, api_key: Any = None) -> Anomaly:
    """Send again the channels of an alert that failed."""
    from indicators import tasks

    alert = Anomaly.objects.select_for_update().filter(pk=alert_id).first()
    if alert is None:
        raise AlertNotFound(f"No alert {alert_id}.")
    if NotifyStatus.FAILED not in (alert.email_status, alert.webhook_status):
        raise CheckNotFailed(f"Alert {alert_id} has no failed notification to send again.")
    previous = alert.notify_error
    for field in ("email_status", "webhook_status"):
        if getattr(alert, field) == NotifyStatus.FAILED:
            setattr(alert, field, NotifyStatus.PENDING)
    alert.notify_error = ""
    alert.save(update_fields=["email_status", "webhook_status", "notify_error"])
    record_audit(
        actor=actor,
        api_key=api_key,
        action="indicators.alert_requeued",
        obj=alert,
        details={"previous_error": previous},
    )
    transaction.on_commit(
        lambda: publish(f"anomaly alert {alert.pk}", tasks.notify_anomaly, kwargs={"anomaly_id": alert.pk})
    )
    return alert
