"""Anomaly alerts: the check of one point, the daily and hourly checks of the stored indicators
with the sources that moved, muting and sensitivity, failed checks that stay visible until
retried, and the alerts sent by e-mail (a real SMTP server) and to a webhook (a real HTTP server)."""

from __future__ import annotations

import logging
import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.test import override_settings

from access.models import AuditEntry
from indicators import anomalies, services
from indicators.errors import AlreadyAcknowledged, CheckNotFailed
from indicators.models import Anomaly, AnomalyCheckRun, CheckKind, NotifyStatus
from indicators.registry import Fold, Indicator, Unit, register_indicator, unregister_indicator
from tests.campaigns.receiver import Receiver
from tests.campaigns.smtp_receiver import SmtpReceiver
from tests.factories.indicators import daily_event_count, events_on

DAY = date(2026, 3, 2)  # a Monday


def weekly(n: int, *, level: float = 100.0, seed: int = 3) -> list[float]:
    rng = np.random.default_rng(seed)
    return [level * (1 + 0.2 * math.sin(2 * math.pi * i / 7)) + rng.normal(0, level * 0.03) for i in range(n)]


# --- the check of one point ---------------------------------------------------------------------


def test_a_normal_day_is_inside_its_expected_range():
    values = weekly(57)
    check = anomalies.check_point(values[:-1], values[-1], period=7, k=4.5)
    assert not check.anomalous
    assert check.low < check.expected < check.high


def test_a_spike_and_a_drop_of_forty_percent_are_outside_it():
    values = weekly(57)
    spike = anomalies.check_point(values[:-1], values[-1] * 1.4, period=7, k=4.5)
    drop = anomalies.check_point(values[:-1], values[-1] * 0.6, period=7, k=4.5)
    assert (spike.anomalous, spike.direction) == (True, "spike")
    assert (drop.anomalous, drop.direction) == (True, "drop")
    assert spike.score > 4.5 and drop.score < -4.5


def test_the_weekly_season_is_expected_not_alerted():
    # A weekly low of 40% under the mean is the usual Sunday, not an anomaly.
    values = [100.0 if i % 7 else 60.0 for i in range(57)]
    check = anomalies.check_point(values[:-1], 60.0 if 56 % 7 == 0 else 100.0, period=7, k=4.5)
    assert not check.anomalous


def test_lower_sensitivity_widens_the_range():
    values = weekly(57)
    normal = anomalies.check_point(values[:-1], values[-1], period=7, k=4.5)
    low = anomalies.check_point(values[:-1], values[-1], period=7, k=6.0)
    assert low.high - low.low > normal.high - normal.low


def test_too_short_a_history_is_refused():
    with pytest.raises(ValueError, match="at least 14"):
        anomalies.check_point([1.0] * 10, 1.0, period=7, k=4.5)


def test_the_bench_finds_injected_anomalies_with_few_false_alerts():
    from bench.anomalies import run

    result = run(seed=3, indicators=4, days=200, anomalies=8)
    assert result.recall >= 0.85
    assert result.precision >= 0.85
    assert result.false_per_indicator_month <= 1
    assert result.line().startswith("precision ")


# --- the checks of the stored indicators ----------------------------------------------------------


@pytest.fixture
def opens(db):
    register_indicator(Indicator("test_opens", "Test opens", Unit.COUNT, Fold.SUM, daily_event_count("app_open")))
    yield "test_opens"
    unregister_indicator("test_opens")


def store_history(*, spike: int = 0) -> None:
    """Eight weeks of `app_open` events before DAY, weekly shaped, from two sources, and on DAY the
    usual count plus `spike` events from `ads`."""
    values = weekly(57, level=60)
    for offset, value in enumerate(values):
        day = DAY - timedelta(days=56 - offset)
        count = round(value)
        events_on("app_open", day, count // 2, utm_source="search")
        events_on("app_open", day, count - count // 2, utm_source="social")
    events_on("app_open", DAY, spike, utm_source="ads")


def check_day() -> AnomalyCheckRun:
    run = services.request_anomaly_check(kind=CheckKind.DAILY, period_start=datetime(2026, 3, 2, 9, tzinfo=UTC))
    return anomalies.run_check(run_id=run.pk)


def test_a_spike_raises_one_alert_naming_the_range_value_and_the_source_that_moved(opens):
    store_history(spike=60)
    run = check_day()
    assert run.status == AnomalyCheckRun.Status.DONE
    alert = Anomaly.objects.get(indicator=opens)
    assert alert.direction == "spike"
    assert alert.low < alert.expected < alert.high < alert.value
    assert alert.period_start == datetime(2026, 3, 2, tzinfo=UTC)
    assert alert.movers[0]["source"] == "ads"
    assert alert.movers[0]["measure"] == "events"
    assert Decimal(alert.movers[0]["change"]) == Decimal(60)
    assert run.alerts == 1 and run.indicators_checked >= 1


def test_a_usual_day_raises_nothing(opens):
    store_history()
    run = check_day()
    assert run.status == AnomalyCheckRun.Status.DONE
    assert not Anomaly.objects.exists()


def test_checking_the_same_day_again_returns_the_first_run_and_no_second_alert(opens):
    store_history(spike=60)
    first = check_day()
    second = check_day()
    assert first.pk == second.pk
    assert Anomaly.objects.count() == 1


def test_a_muted_indicator_is_not_checked(opens):
    store_history(spike=60)
    services.set_indicator_watch(indicator=opens, muted=True)
    check_day()
    assert not Anomaly.objects.filter(indicator=opens).exists()
    assert AuditEntry.objects.filter(action="indicators.watch_changed").exists()


def test_low_sensitivity_lets_a_moderate_move_pass_that_high_sensitivity_alerts(opens):
    store_history(spike=14)
    services.set_indicator_watch(indicator=opens, sensitivity="high")
    check_day()
    assert Anomaly.objects.filter(indicator=opens).exists()
    Anomaly.objects.all().delete()
    AnomalyCheckRun.objects.all().delete()
    services.set_indicator_watch(indicator=opens, sensitivity="low")
    check_day()
    assert not Anomaly.objects.filter(indicator=opens).exists()


def test_an_unknown_indicator_or_sensitivity_is_refused_by_field(db):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as unknown:
        services.set_indicator_watch(indicator="nope", muted=True)
    assert "indicator" in unknown.value.message_dict
    with pytest.raises(ValidationError) as bad:
        services.set_indicator_watch(indicator="dau", sensitivity="extreme")
    assert "sensitivity" in bad.value.message_dict


def test_the_hourly_check_alerts_a_drop_of_event_volume(db):
    hour = datetime(2026, 3, 2, 14, tzinfo=UTC)
    from tests.factories.tracking import EventFactory
    from tracking.models import Event

    rows = []
    for h in range(7 * 24):
        at = hour - timedelta(hours=7 * 24 - h)
        count = 20 + 10 * (9 <= at.hour <= 21)
        rows += EventFactory.build_batch(count, timestamp=at + timedelta(minutes=10), utm_source="search")
    rows += EventFactory.build_batch(2, timestamp=hour + timedelta(minutes=10), utm_source="search")
    Event.objects.bulk_create(rows)
    run = services.request_anomaly_check(kind=CheckKind.HOURLY, period_start=hour + timedelta(minutes=40))
    run = anomalies.run_check(run_id=run.pk)
    alert = Anomaly.objects.get(indicator="event_volume")
    assert (alert.granularity, alert.direction, alert.period_start) == ("hourly", "drop", hour)
    assert alert.value == 2
    assert alert.movers[0]["source"] == "search"


# --- failures --------------------------------------------------------------------------------------


@pytest.fixture
def broken_indicator(db):
    def daily(start, end):
        raise RuntimeError("coupon spend table is locked")

    register_indicator(Indicator("test_broken", "Broken", Unit.MONEY, Fold.SUM, daily))
    yield "test_broken"
    unregister_indicator("test_broken")


def test_a_failed_check_keeps_its_reason_logs_it_and_is_retried_once_failed(broken_indicator, caplog):
    run = services.request_anomaly_check(kind=CheckKind.DAILY, period_start=datetime(2026, 3, 2, tzinfo=UTC))
    with caplog.at_level(logging.ERROR, logger="indicators.anomalies"), pytest.raises(RuntimeError):
        anomalies.run_check(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == AnomalyCheckRun.Status.FAILED
    assert run.error == "RuntimeError: coupon spend table is locked"
    assert any(f"anomaly check run {run.pk} failed" in r.getMessage() for r in caplog.records)
    retried = services.retry_anomaly_check(run_id=run.pk)
    assert (retried.status, retried.error) == ("queued", "")
    assert AuditEntry.objects.filter(action="indicators.anomaly_check_retried").exists()
    with pytest.raises(CheckNotFailed):
        services.retry_anomaly_check(run_id=run.pk)


# --- acknowledging and sending ---------------------------------------------------------------------


def make_alert(**fields) -> Anomaly:
    defaults = {
        "indicator": "revenue",
        "granularity": CheckKind.DAILY,
        "period_start": datetime(2026, 3, 2, tzinfo=UTC),
        "value": Decimal("900"),
        "expected": Decimal("500"),
        "low": Decimal("400"),
        "high": Decimal("600"),
        "score": 8.0,
        "direction": "spike",
        "movers": [
            {"source": "ads", "measure": "revenue", "value": "420", "usual": "20", "change": "400", "relative": 20}
        ],
    }
    return Anomaly.objects.create(**{**defaults, **fields})


@pytest.mark.django_db
def test_an_alert_is_acknowledged_once_with_who_and_why(make_staff):
    alert = make_alert()
    staff = make_staff("Operations")
    services.acknowledge_alert(alert_id=alert.pk, note="flash sale", actor=staff)
    alert.refresh_from_db()
    assert (alert.status, alert.acknowledged_by, alert.note) == ("acknowledged", staff, "flash sale")
    with pytest.raises(AlreadyAcknowledged):
        services.acknowledge_alert(alert_id=alert.pk)


@pytest.mark.django_db
def test_an_alert_is_sent_by_real_smtp_and_to_a_real_webhook():
    alert = make_alert()
    with (
        SmtpReceiver() as smtp,
        Receiver() as hook,
        override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=smtp.port,
            OPSLOOP_ALERT_EMAILS=["ops@example.com"],
            OPSLOOP_ALERT_WEBHOOK_URL=hook.url,
        ),
    ):
        sent = services.notify_alert(alert_id=alert.pk)
        again = services.notify_alert(alert_id=alert.pk)
    assert (sent.email_status, sent.webhook_status) == ("sent", "sent")
    assert (again.email_status, again.webhook_status) == ("sent", "sent")
    assert len(smtp.messages) == 1 and len(hook.requests) == 1  # a redelivered task sends nothing twice
    message = smtp.messages[0]
    assert message["To"] == "ops@example.com"
    assert "revenue spike on 2026-03-02: 900" in message["Subject"]
    assert "ads: revenue 420 against 20 usually" in message.get_payload()
    assert hook.requests[0]["indicator"] == "revenue"
    assert hook.requests[0]["low"] == "400.00" and hook.requests[0]["high"] == "600.00"
    assert hook.requests[0]["movers"][0]["source"] == "ads"


@pytest.mark.django_db
def test_a_failed_sending_is_marked_with_its_reason_and_sent_again_by_an_operator(caplog):
    alert = make_alert()
    with (
        SmtpReceiver() as smtp,
        Receiver(status=500) as hook,
        override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=smtp.port,
            OPSLOOP_ALERT_EMAILS=["refuse@example.com"],
            OPSLOOP_ALERT_WEBHOOK_URL=hook.url,
        ),
        caplog.at_level(logging.ERROR, logger="indicators.services"),
    ):
        failed = services.notify_alert(alert_id=alert.pk)
        assert (failed.email_status, failed.webhook_status) == (NotifyStatus.FAILED, NotifyStatus.FAILED)
        assert "e-mail: SMTPRecipientsRefused" in failed.notify_error
        assert "webhook: HTTPError: 500" in failed.notify_error
        assert any(f"webhook of anomaly alert {alert.pk} failed" in r.getMessage() for r in caplog.records)
        hook.status = 200
        with override_settings(OPSLOOP_ALERT_EMAILS=["ops@example.com"]):
            services.resend_alert(alert_id=alert.pk)
            resent = services.notify_alert(alert_id=alert.pk)
    assert (resent.email_status, resent.webhook_status) == ("sent", "sent")
    assert resent.notify_error == ""
    assert len(smtp.messages) == 1
    with pytest.raises(CheckNotFailed):
        services.resend_alert(alert_id=alert.pk)


def test_the_worker_runs_the_daily_check_and_records_it(opens, celery_worker):
    import time

    from config.celery import app

    store_history(spike=60)
    run = services.request_anomaly_check(kind=CheckKind.DAILY, period_start=datetime(2026, 3, 2, tzinfo=UTC))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status in ("done", "failed"):
            break
        time.sleep(0.5)
    # The worker has not registered the test's indicator (another process), so it checks the
    # event-only ones; the run must still finish and be recorded.
    assert run.status == "done", run.error
    assert app.send_task("indicators.tasks.check_anomalies_daily").get(timeout=60)["status"] in (
        "queued",
        "done",
        "running",
    )


def test_the_beat_rows_of_the_checks_exist(db):
    from django_celery_beat.models import PeriodicTask

    tasks = set(PeriodicTask.objects.filter(task__startswith="indicators.tasks.check_").values_list("task", flat=True))
    assert tasks == {"indicators.tasks.check_anomalies_daily", "indicators.tasks.check_event_volume_hourly"}


# --- who gets the alerts --------------------------------------------------------------------------


@pytest.mark.django_db
def test_recipients_kept_in_the_admin_get_alerts_besides_the_deployments(settings, make_staff, client):
    from indicators.models import AlertRecipient

    settings.OPSLOOP_ALERT_EMAILS = ["ops@shop.example"]
    settings.OPSLOOP_ALERT_WEBHOOK_URL = ""
    settings.OPSLOOP_GATEWAY_ALLOWED_HOSTS = ["127.0.0.1"]
    lead = make_staff("Operations lead")
    client.force_login(lead)
    url = "/admin/indicators/alertrecipient/add/"
    refused = client.post(url, {"kind": "webhook", "address": "http://10.0.0.5/hook", "active": "on"})
    assert refused.status_code == 200 and "not one the deployment allows" in refused.content.decode()
    bad_email = client.post(url, {"kind": "email", "address": "nobody", "active": "on"})
    assert "Not an e-mail address." in bad_email.content.decode()
    assert client.post(url, {"kind": "email", "address": "lead@shop.example", "active": "on"}).status_code == 302
    assert AuditEntry.objects.filter(action="indicators.alert_recipient_added").count() == 1
    AlertRecipient.objects.create(kind="email", address="gone@shop.example", active=False)
    assert services.alert_emails() == ["ops@shop.example", "lead@shop.example"]
    # Operations see the list; only leads change it.
    client.force_login(make_staff("Operations"))
    assert client.get("/admin/indicators/alertrecipient/").status_code == 200
    assert client.get(url).status_code == 403

    with SmtpReceiver() as smtp, Receiver() as hook:
        services.save_alert_recipient(kind="webhook", address=hook.url, actor=lead)
        with override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend", EMAIL_HOST="127.0.0.1", EMAIL_PORT=smtp.port
        ):
            anomalies_run = AnomalyCheckRun.objects.create(
                kind=CheckKind.DAILY, period_start=datetime(2026, 3, 2, tzinfo=UTC)
            )
            check = anomalies.PointCheck(value=900.0, expected=500.0, low=400.0, high=600.0, scale=20.0)
            alert = anomalies._alert(
                run=anomalies_run,
                indicator="revenue",
                granularity=CheckKind.DAILY,
                at=datetime(2026, 3, 2, tzinfo=UTC),
                check=check,
                unit=Unit.MONEY,
                movers=[],
            )
            assert (alert.email_status, alert.webhook_status) == ("pending", "pending")
            sent = services.notify_alert(alert_id=alert.pk)
    assert (sent.email_status, sent.webhook_status) == ("sent", "sent")
    assert sorted(a.strip() for a in smtp.messages[0]["To"].split(",")) == ["lead@shop.example", "ops@shop.example"]
    assert [r["indicator"] for r in hook.requests] == ["revenue"]
