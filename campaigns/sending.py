"""Sending one batch of deliveries: the worker's side of a campaign.

A batch is claimed under a lease, a token of this run that the worker renews (its heartbeat)
for as long as the batch lasts, so the sweeper takes back only the rows of a worker that died,
never those of one that is alive but slow; every write of the run names the lease (a fencing
token), so a run that lost its rows cannot overwrite what another one did with them.

Each post is marked in flight just before it starts, and its outcome is recorded as soon as it
returns, together with whatever else returned meanwhile: a worker killed mid-batch leaves at
most the posts in flight unrecorded. Those are sent again under the same idempotency key, or,
on a channel set to at most once, marked `unknown` for an operator to review.

Only real posts count as attempts: quiet hours, the frequency cap, a rate-limit wait or a
disabled channel defer a message without using one up.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import time
import uuid
import zoneinfo
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

import requests
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from campaigns import channels
from campaigns.models import Campaign, CampaignStatus, ChannelKind, Delivery, DeliveryStatus
from config.celery import publish
from config.errors import DomainError
from coupons import services as coupon_services
from coupons.models import Coupon, CouponRule
from materials import selectors as material_selectors
from materials.models import MaterialVersion, VersionStatus
from materials.rendering import RenderError, render

logger = logging.getLogger(__name__)

SENDABLE = (CampaignStatus.RUNNING, CampaignStatus.AWAITING_ROLLOUT)
# How long a message waits for a channel an operator disabled before it is looked at again.
CHANNEL_DISABLED_WAIT = dt.timedelta(minutes=5)

# Apps above this one that can tell, when a message is claimed, that it is no longer wanted (a
# journey's person reached the goal while the message was being sent, deferred or retried):
# `check(rows) -> {delivery id: reason}`; those rows are skipped, never posted.
ClaimCheck = Callable[[list[Delivery]], dict[int, str]]
_claim_checks: dict[str, ClaimCheck] = {}


def register_claim_check(name: str, check: ClaimCheck) -> None:
    _claim_checks[name] = check


_TRANSIENT_REASONS = ("retrying:", "waiting:")


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def heartbeat_seconds() -> float:
    """How often a sending worker renews its lease: a fifth of the time after which the sweeper
    takes a batch back, so a few missed beats (a busy machine) still leave it alone."""
    stale = float(_setting("OPSLOOP_DELIVERY_STALE_SECONDS", 300))
    return float(_setting("OPSLOOP_DELIVERY_HEARTBEAT_SECONDS", 0) or max(0.2, min(30.0, stale / 5)))


class Lease:
    """This run's claim on its rows, renewed while it works."""

    def __init__(self) -> None:
        self.token = uuid.uuid4()
        self.interval = heartbeat_seconds()
        self._renewed = time.monotonic()

    def renew_if_due(self) -> None:
        if time.monotonic() - self._renewed < self.interval:
            return
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE campaigns_delivery SET claimed_at = clock_timestamp() WHERE lease = %s AND status = 'sending'",
                [self.token],
            )
        self._renewed = time.monotonic()


# --- time rules --------------------------------------------------------------------------------


def _tz(name: str) -> dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(name) if name else zoneinfo.ZoneInfo(_setting("OPSLOOP_DEFAULT_USER_TIMEZONE", "UTC"))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def quiet_until(*, now: dt.datetime, tz_name: str, start_hour: int, end_hour: int) -> dt.datetime | None:
    """The end of the quiet hours if `now` falls in them in the person's own time zone, else None."""
    if start_hour == end_hour:
        return None
    local = now.astimezone(_tz(tz_name))
    hour = local.hour
    quiet = (start_hour <= hour or hour < end_hour) if start_hour > end_hour else (start_hour <= hour < end_hour)
    if not quiet:
        return None
    morning = local.replace(hour=end_hour, minute=0, second=0, microsecond=0)
    if morning <= local:
        morning = (local + dt.timedelta(days=1)).replace(hour=end_hour, minute=0, second=0, microsecond=0)
        # Re-localise: the day after may have a different UTC offset (daylight saving).
        morning = dt.datetime.combine(morning.date(), dt.time(end_hour), tzinfo=_tz(tz_name))
    return morning.astimezone(dt.UTC)


def backoff_seconds(*, attempts: int, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: half the step fixed, half random, so retries of
    many deliveries spread out instead of hitting the provider together."""
    step = min(cap, base * (2 ** max(0, attempts - 1)))
    return step / 2 + random.uniform(0, step / 2)


# --- the batch ---------------------------------------------------------------------------------


def deliver_batch(delivery_ids: Sequence[int]) -> dict[str, int]:
    """Claim these deliveries under a new lease and send them. Safe to run twice, or on ids
    another worker holds: only pending, due rows of sendable campaigns are claimed."""
    counts = {"sent": 0, "retry": 0, "failed": 0, "deferred": 0, "skipped": 0, "unknown": 0}
    lease = Lease()
    counts["skipped"] += _skip_merged_away(delivery_ids)
    claimed = _claim(delivery_ids, lease.token)
    if not claimed:
        return counts
    try:
        rows = list(
            Delivery.objects.filter(pk__in=claimed).select_related("variant", "campaign", "profile").order_by("id")
        )
        rows = _drop_unwanted(rows, lease.token, counts)
        by_campaign: dict[int, list[Delivery]] = defaultdict(list)
        for d in rows:
            by_campaign[d.campaign_id].append(d)
        for group in by_campaign.values():
            _send_campaign_group(group[0].campaign, group, lease, counts)
    finally:
        # Rows never posted (the run broke off, or their campaign was paused or cancelled while
        # it ran) go back to pending at once rather than when their lease goes stale.
        _release_unposted(lease.token)
    return counts


def _drop_unwanted(rows: list[Delivery], token: uuid.UUID, counts: dict[str, int]) -> list[Delivery]:
    dropped: dict[int, str] = {}
    for _name, check in sorted(_claim_checks.items()):
        dropped.update(check(rows))
    if not dropped:
        return rows
    _set_final(list(dropped.items()), DeliveryStatus.SKIPPED, token)
    counts["skipped"] += len(dropped)
    return [d for d in rows if d.pk not in dropped]


def _skip_merged_away(delivery_ids: Sequence[int]) -> int:
    """Skip (MERGED) the pending messages of profiles merged away whose survivor stands for the
    person in that campaign (holds its assignment, or a message of that phase): a message a merge
    found claimed, or one handed back to pending, must not reach the person a second time or reach
    a survivor held out. The UPDATE takes the row lock, so a concurrent claim sees the skip."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE campaigns_delivery d SET status = 'skipped', reason = LEFT('MERGED: into ' || s.user_id, 500),"
            " queued_at = NULL, lease = NULL, posting_since = NULL"
            " FROM profiles_profile p JOIN profiles_profile s ON s.id = p.merged_into_id"
            " WHERE d.id = ANY(%s) AND d.status = 'pending' AND p.id = d.profile_id"
            " AND (EXISTS (SELECT 1 FROM campaigns_assignment a WHERE a.campaign_id = d.campaign_id"
            "              AND a.profile_id = s.id)"
            "      OR EXISTS (SELECT 1 FROM campaigns_delivery o WHERE o.campaign_id = d.campaign_id"
            "                 AND o.phase = d.phase AND o.profile_id = s.id))"
            " RETURNING CASE WHEN d.sent_at IS NULL AND d.delivered_at IS NULL THEN d.coupon_code ELSE '' END",
            [list(delivery_ids)],
        )
        codes = [row[0] for row in cursor.fetchall()]
    release_coupons([c for c in codes if c])
    return len(codes)


def _claim(delivery_ids: Sequence[int], token: uuid.UUID) -> list[int]:
    # The conditional UPDATE is the lock: of two workers given the same ids, only one moves
    # a row from pending to sending, and the rows carry its lease from then on.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE campaigns_delivery d SET status = 'sending', claimed_at = clock_timestamp(), lease = %s,"
            " posting_since = NULL FROM campaigns_campaign c"
            " WHERE d.id = ANY(%s) AND d.status = 'pending'"
            " AND (d.not_before IS NULL OR d.not_before <= clock_timestamp())"
            " AND c.id = d.campaign_id AND c.status = ANY(%s) RETURNING d.id",
            [token, list(delivery_ids), list(SENDABLE)],
        )
        return [row[0] for row in cursor.fetchall()]


def _release_unposted(token: uuid.UUID) -> None:
    """Hand back what this run holds and has not started posting."""
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE campaigns_delivery SET status = 'pending', lease = NULL, queued_at = NULL"
                " WHERE lease = %s AND status = 'sending' AND posting_since IS NULL",
                [token],
            )
    except Exception:
        logger.exception("Could not hand back the unsent rows of lease %s; the sweeper will.", token)


def _send_campaign_group(campaign: Campaign, group: list[Delivery], lease: Lease, counts: dict[str, int]) -> None:
    now = timezone.now()
    ready, deferred = [], []
    for d in group:
        until = (
            quiet_until(
                now=now,
                tz_name=d.profile.timezone,
                start_hour=campaign.quiet_start_hour,
                end_hour=campaign.quiet_end_hour,
            )
            if campaign.respect_quiet_hours
            else None
        )
        if until:
            deferred.append((d.pk, until))
        else:
            ready.append(d)
    if deferred:
        _defer(deferred, lease.token)
        counts["deferred"] += len(deferred)
    config = channels.channel_config(campaign.channel)
    if ready and not config.enabled:
        # Nothing is posted, so no attempt is used: the messages wait for the channel.
        wake = now + CHANNEL_DISABLED_WAIT
        _defer([(d.pk, wake) for d in ready], lease.token, reason="waiting: channel disabled")
        counts["deferred"] += len(ready)
        return
    with transaction.atomic():
        ready = _apply_cap(campaign, ready, now, lease.token)
    counts["skipped"] += len(group) - len(deferred) - len(ready)
    lease.renew_if_due()
    _issue_coupons(ready)
    ready = _render_materials(ready, lease.token, counts)
    if ready:
        _post_all(campaign.channel, config, ready, lease, counts)


def _defer(rows: Sequence[tuple[int, dt.datetime]], token: uuid.UUID, *, reason: str = "") -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE campaigns_delivery d SET status = 'pending', not_before = t.not_before, queued_at = NULL,"
            " reason = %s, lease = NULL, posting_since = NULL"
            " FROM unnest(%s::bigint[], %s::timestamptz[]) AS t(id, not_before)"
            " WHERE d.id = t.id AND d.lease = %s AND d.status = 'sending'",
            [reason, [r[0] for r in rows], [r[1] for r in rows], token],
        )


def _set_final(rows: Sequence[tuple[int, str]], status: str, token: uuid.UUID) -> None:
    """End these rows if this run still holds them. Failed and skipped ones that surely never
    reached anyone (no send or receipt recorded) give their coupons back; unknown ones keep them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE campaigns_delivery d SET status = %s, reason = t.reason, lease = NULL, posting_since = NULL,"
            " failed_at = CASE WHEN %s = 'failed' THEN now() ELSE d.failed_at END"
            " FROM unnest(%s::bigint[], %s::text[]) AS t(id, reason)"
            " WHERE d.id = t.id AND d.lease = %s AND d.status = 'sending'"
            " RETURNING CASE WHEN d.sent_at IS NULL AND d.delivered_at IS NULL THEN d.coupon_code ELSE '' END",
            [status, status, [r[0] for r in rows], [r[1][:500] for r in rows], token],
        )
        codes = [row[0] for row in cursor.fetchall()]
    if status != DeliveryStatus.UNKNOWN:
        release_coupons([c for c in codes if c])


# --- frequency cap and fatigue -----------------------------------------------------------------


def _apply_cap(campaign: Campaign, deliveries: list[Delivery], now: dt.datetime, token: uuid.UUID) -> list[Delivery]:
    """Count each delivery against its person's daily cap (across all campaigns) with a
    conditional upsert; those over the cap, or fatigued on this channel, are skipped."""
    keep, skipped = [], []
    fatigued = _recently_messaged_fatigued(campaign, deliveries, now)
    todo = []
    # In person order: concurrent batches of two campaigns to the same people then lock the
    # people's counters in the same order and cannot deadlock.
    for d in sorted(deliveries, key=lambda d: (d.profile_id, d.pk)):
        if d.profile_id in fatigued:
            skipped.append((d.id, "FATIGUED"))
        elif d.cap_day is not None or campaign.frequency_cap_per_day == 0:
            keep.append(d)
        else:
            todo.append(d)
    # One person may have several messages in a batch (a trigger fired twice, two cron runs): an
    # upsert may touch a row once only, so each round takes at most one message per person.
    rounds: list[list[Delivery]] = []
    seen: dict[int, int] = defaultdict(int)
    for d in todo:
        k = seen[d.profile_id]
        seen[d.profile_id] += 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(d)
    for round_ in rounds:
        days = [now.astimezone(_tz(d.profile.timezone)).date() for d in round_]
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO campaigns_dailysendcount (profile_id, day, count)"
                " SELECT * FROM unnest(%s::bigint[], %s::date[], %s::int[])"
                " ON CONFLICT (profile_id, day) DO UPDATE SET count = campaigns_dailysendcount.count + 1"
                " WHERE campaigns_dailysendcount.count < %s RETURNING profile_id",
                [[d.profile_id for d in round_], days, [1] * len(round_), campaign.frequency_cap_per_day],
            )
            counted = {row[0] for row in cursor.fetchall()}
        for d, day in zip(round_, days, strict=True):
            if d.profile_id in counted:
                d.cap_day = day
                keep.append(d)
            else:
                skipped.append((d.id, "FREQUENCY_CAP"))
    if todo:
        Delivery.objects.bulk_update([d for d in todo if d.cap_day], ["cap_day"])
    if skipped:
        _set_final(skipped, DeliveryStatus.SKIPPED, token)
    return sorted(keep, key=lambda d: d.pk)


def _recently_messaged_fatigued(campaign: Campaign, deliveries: list[Delivery], now: dt.datetime) -> set[int]:
    from profiles.models import ProfileTag

    tag = f"{campaign.channel}_fatigued"
    pids = [d.profile_id for d in deliveries]
    tagged = set(ProfileTag.objects.filter(tag__name=tag, profile_id__in=pids).values_list("profile_id", flat=True))
    if not tagged:
        return set()
    cooldown = dt.timedelta(days=int(_setting("OPSLOOP_FATIGUE_COOLDOWN_DAYS", 7)))
    return set(
        Delivery.objects.filter(
            profile_id__in=tagged, channel=campaign.channel, sent_at__gte=now - cooldown
        ).values_list("profile_id", flat=True)
    )


# --- coupons -----------------------------------------------------------------------------------


def _issue_coupons(deliveries: list[Delivery]) -> None:
    needing = [d for d in deliveries if d.variant.coupon_rule_id and not d.coupon_code]
    if not needing:
        return
    rules = {r.pk: r for r in CouponRule.objects.filter(pk__in={d.variant.coupon_rule_id for d in needing})}
    for d in needing:
        rule = rules.get(d.variant.coupon_rule_id)
        if rule is None:
            continue
        try:
            coupon = coupon_services.issue_coupon(
                rule=rule,
                profile=d.profile,
                request_id=f"delivery:{d.idempotency_key}",
                source="campaign",
                source_ref=d.variant.source_ref,
            )
        except DomainError as exc:
            # The message still goes out; the reason shows why it carries no coupon.
            logger.info("coupon not issued for delivery %s: %s", d.pk, exc.reason)
            d.reason = f"COUPON_NOT_ISSUED: {exc.reason}"
            Delivery.objects.filter(pk=d.pk).update(reason=d.reason)
            continue
        d.coupon_code = coupon.code
        Delivery.objects.filter(pk=d.pk).update(coupon_code=coupon.code)


def release_coupons(codes: Sequence[str]) -> None:
    """A message that will never reach its person gives its coupon back to the rule's budget."""
    if not codes:
        return
    ids = list(Coupon.objects.filter(code__in=list(codes)).values_list("pk", flat=True))
    if ids:
        coupon_services.revoke_coupons(coupon_ids=ids)


# --- personalisation ---------------------------------------------------------------------------


def _render_materials(deliveries: list[Delivery], token: uuid.UUID, counts: dict[str, int]) -> list[Delivery]:
    """Render the messages of variants that send a material, each for its person (their profile,
    the coupon issued with it, its tracked link). One whose message cannot be made (a value
    missing without a default, the channel's limit exceeded, the sandbox refusing) fails alone
    with the reason, and gives its coupon back; the rest go on."""
    with_material = [d for d in deliveries if d.variant.material_version_id]
    if not with_material:
        return deliveries
    versions = {
        v.pk: v
        for v in MaterialVersion.objects.select_related("material").filter(
            pk__in={d.variant.material_version_id for d in with_material}
        )
    }
    compiled: dict[int, Any] = {}
    unusable: dict[int, str] = {}
    for pk, version in versions.items():
        if version.status != VersionStatus.APPROVED:
            unusable[pk] = f"MATERIAL_NOT_APPROVED: {version} is a draft"
            continue
        try:
            compiled[pk] = material_selectors.compiled(version)
        except Exception as exc:  # a template changed behind the checks: its messages fail, not the batch
            unusable[pk] = f"RENDER_FAILED: {exc.__class__.__name__}: {exc}"[:500]
    people = material_selectors.person_contexts(d.profile_id for d in with_material)
    coupons = material_selectors.coupon_contexts(d.coupon_code for d in with_material)
    failed: list[tuple[int, str]] = []
    for d in with_material:
        pk = d.variant.material_version_id
        if pk in unusable:
            failed.append((d.pk, unusable[pk]))
            continue
        version = versions[pk]
        context = {
            **people.get(d.profile_id, {}),
            **coupons.get(d.coupon_code, {}),
            "link": channels.click_url(d.pk) if version.url else None,
        }
        try:
            d.rendered = render(compiled[pk], context)
        except RenderError as exc:
            failed.append((d.pk, f"RENDER_FAILED: {exc}"))
            continue
        except Exception as exc:  # one person's message fails, never the batch
            logger.exception("rendering delivery %s failed", d.pk)
            failed.append((d.pk, f"RENDER_FAILED: {exc.__class__.__name__}: {exc}"[:500]))
            continue
        d.rendered_url = channels.click_url(d.pk) if version.url else ""
    if failed:
        logger.warning(
            "%d messages of campaign %s could not be rendered; they failed with the reason (first: %s)",
            len(failed),
            deliveries[0].campaign_id,
            failed[0][1],
        )
        _fail_unrendered(failed, token)
        counts["failed"] += len(failed)
    dropped = {pk for pk, _reason in failed}
    return [d for d in deliveries if d.pk not in dropped]


# A message that could not be made fails. Where it was never posted (no attempt made, none in
# flight), in the same transaction its person's frequency-cap slot for that day and its coupon go
# back; one posted on an earlier attempt keeps both, even without an answer: it may have reached
# the person.
_FAIL_UNRENDERED_SQL = """
UPDATE campaigns_delivery d SET status = 'failed', reason = t.reason, lease = NULL, posting_since = NULL,
       failed_at = now(),
       cap_day = CASE WHEN old.attempts = 0 AND old.first_attempt_at IS NULL AND old.posting_since IS NULL
                       AND old.sent_at IS NULL AND old.delivered_at IS NULL THEN NULL ELSE d.cap_day END
  FROM unnest(%(ids)s::bigint[], %(reasons)s::text[]) AS t(id, reason), campaigns_delivery old
 WHERE d.id = t.id AND old.id = d.id AND d.lease = %(lease)s AND d.status = 'sending'
RETURNING d.profile_id, old.cap_day,
          (old.attempts = 0 AND old.first_attempt_at IS NULL AND old.posting_since IS NULL
           AND old.sent_at IS NULL AND old.delivered_at IS NULL) AS never_posted,
          d.coupon_code
"""


def _fail_unrendered(rows: Sequence[tuple[int, str]], token: uuid.UUID) -> None:
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                _FAIL_UNRENDERED_SQL,
                {"ids": [r[0] for r in rows], "reasons": [r[1][:500] for r in rows], "lease": token},
            )
            failed = cursor.fetchall()
            slots: dict[tuple[int, dt.date], int] = defaultdict(int)
            for profile_id, day, never_posted, _code in failed:
                if never_posted and day is not None:
                    slots[(profile_id, day)] += 1
            if slots:
                keys = sorted(slots)
                # In person order, as `_apply_cap` takes them: two batches giving back and
                # counting the same people's slots cannot deadlock.
                cursor.execute(
                    "SELECT c.id FROM campaigns_dailysendcount c"
                    " JOIN unnest(%s::bigint[], %s::date[]) AS k(profile_id, day)"
                    " ON c.profile_id = k.profile_id AND c.day = k.day ORDER BY c.profile_id, c.day FOR UPDATE OF c",
                    [[k[0] for k in keys], [k[1] for k in keys]],
                )
                cursor.execute(
                    "UPDATE campaigns_dailysendcount c SET count = GREATEST(c.count - k.n, 0)"
                    " FROM unnest(%s::bigint[], %s::date[], %s::int[]) AS k(profile_id, day, n)"
                    " WHERE c.profile_id = k.profile_id AND c.day = k.day",
                    [[k[0] for k in keys], [k[1] for k in keys], [slots[k] for k in keys]],
                )
        release_coupons([code for _p, _d, never_posted, code in failed if never_posted and code])


# --- posting -----------------------------------------------------------------------------------


def payload(d: Delivery) -> dict[str, Any]:
    variant = d.variant
    rendered: dict[str, str] | None = getattr(d, "rendered", None)
    out = {
        "delivery_id": d.pk,
        "idempotency_key": str(d.idempotency_key),
        "campaign": d.campaign_id,
        "variant": variant.name,
        "user_id": d.user_id,
        "channel": d.channel,
        "title": variant.title,
        "body": variant.body,
        "url": channels.click_url(d.pk) if variant.url else "",
        **({"coupon_code": d.coupon_code} if d.coupon_code else {}),
    }
    if rendered is not None:
        out["title"] = rendered.get("title", "")
        out["body"] = rendered.get("body", "")
        out["url"] = getattr(d, "rendered_url", "")
        if rendered.get("html"):
            out["html"] = rendered["html"]
        if d.channel == ChannelKind.WEBHOOK:
            out["data"] = json.loads(out["body"])  # checked to be a JSON object when rendered
    return out


def _post_all(kind: str, config: Any, rows: list[Delivery], lease: Lease, counts: dict[str, int]) -> None:
    if kind == ChannelKind.EMAIL:
        conn = channels.email_connection()
        try:
            conn.open()  # one SMTP session for the whole batch
        except OSError as exc:
            outcome = channels.Outcome(channels.RETRY, f"SMTP connect: {exc.__class__.__name__}")
            _post_window(rows, lambda d: outcome, threads=1, kind=kind, config=config, lease=lease, counts=counts)
            return
        try:
            _post_window(
                rows,
                lambda d: channels.send_email(conn, to=d.profile.email, payload=payload(d), delivery_id=d.pk),
                threads=1,  # an SMTP session is not shared between threads
                kind=kind,
                config=config,
                lease=lease,
                counts=counts,
            )
        finally:
            conn.close()
        return
    threads = int(_setting("OPSLOOP_DELIVERY_THREADS", 8))
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=threads)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    try:
        _post_window(
            rows,
            lambda d: channels.http_post(session, config, payload(d)),
            threads=threads,
            kind=kind,
            config=config,
            lease=lease,
            counts=counts,
        )
    finally:
        session.close()


def _post_window(
    rows: list[Delivery],
    send_one: Callable[[Delivery], channels.Outcome],
    *,
    threads: int,
    kind: str,
    config: Any,
    lease: Lease,
    counts: dict[str, int],
) -> None:
    """Keep up to `threads` posts in flight. Only this thread touches the database: it marks the
    next posts in flight, waits for any to return, records what returned and renews the lease."""

    def guarded(d: Delivery) -> channels.Outcome:
        try:
            return send_one(d)
        except Exception as exc:
            logger.exception("Posting delivery %s raised; it is retried.", d.pk)
            return channels.Outcome(channels.RETRY, f"{exc.__class__.__name__}: {exc}"[:300])

    with _records_not_waiting_for_disk(not config.at_most_once):
        todo = deque(rows)
        in_flight: dict[Future, Delivery] = {}
        with ThreadPoolExecutor(max_workers=threads) as pool:
            while todo or in_flight:
                lease.renew_if_due()
                batch: list[Delivery] = []
                rate_limited = False
                while todo and len(in_flight) + len(batch) < threads:
                    # Wait for the provider's allowance here, before the post is marked: a wait is
                    # no attempt. Block only when nothing else is in flight to collect meanwhile.
                    busy = bool(in_flight or batch)
                    if not channels.acquire_send_slot(
                        kind, config.rate_per_second, max_wait=0 if busy else lease.interval
                    ):
                        rate_limited = True
                        break
                    batch.append(todo.popleft())
                if batch:
                    held = _mark_in_flight([d.pk for d in batch], lease.token)
                    for d in batch:
                        if d.pk in held:
                            d.attempts += 1
                            d.first_attempt_at = held[d.pk]
                            in_flight[pool.submit(guarded, d)] = d
                if not in_flight:
                    continue
                done, _ = wait(in_flight, timeout=0.05 if rate_limited else lease.interval, return_when=FIRST_COMPLETED)
                if done:
                    _record([(in_flight.pop(f), f.result()) for f in done], config, lease.token, counts)


@contextmanager
def _records_not_waiting_for_disk(relaxed: bool) -> Iterator[None]:
    """The marks and records of the posting loop are the batch's serial part. Where a lost record
    only means a second post under the same key (at least once), they need not wait for the disk:
    a crash of PostgreSQL itself loses at most the last moments of them, as a killed worker would.
    At most once needs each mark on disk before its post."""
    if not relaxed:
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET synchronous_commit")


def _mark_in_flight(ids: list[int], token: uuid.UUID) -> dict[int, dt.datetime]:
    """Mark posts as started (one attempt each), only on rows this run still holds, of campaigns
    still sending: a run whose lease was taken back posts nothing more."""
    with connection.cursor() as cursor:
        # A campaign paused or cancelled meanwhile stops here: its rows are handed back unposted.
        cursor.execute(
            "UPDATE campaigns_delivery d SET posting_since = clock_timestamp(), attempts = d.attempts + 1,"
            " first_attempt_at = COALESCE(d.first_attempt_at, clock_timestamp()), claimed_at = clock_timestamp()"
            " FROM campaigns_campaign c"
            " WHERE d.id = ANY(%s) AND d.lease = %s AND d.status = 'sending'"
            " AND c.id = d.campaign_id AND c.status = ANY(%s) RETURNING d.id, d.first_attempt_at",
            [ids, token, list(SENDABLE)],
        )
        return dict(cursor.fetchall())


def _record(
    finished: list[tuple[Delivery, channels.Outcome]], config: Any, token: uuid.UUID, counts: dict[str, int]
) -> None:
    from campaigns import tasks

    now = timezone.now()
    window = dt.timedelta(minutes=config.retry_window_minutes)
    sent, failed, retries, unknown = [], [], [], []
    for d, o in finished:
        if o.kind == channels.SENT:
            sent.append(d.pk)
        elif o.kind == channels.FAILED:
            failed.append((d.pk, o.reason))
        elif o.ambiguous and config.at_most_once:
            # The post may have reached the provider (it timed out waiting for the answer, or the
            # connection dropped after the request went): at most once means not posting it again.
            unknown.append((d.pk, f"OUTCOME_UNKNOWN: {o.reason}"))
        elif d.attempts >= config.max_attempts or (d.first_attempt_at and d.first_attempt_at + window <= now):
            minutes = int((now - (d.first_attempt_at or now)).total_seconds() // 60)
            failed.append((d.pk, f"GAVE_UP after {d.attempts} attempts in {minutes} min: {o.reason}"))
        else:
            delay = backoff_seconds(
                attempts=d.attempts, base=config.backoff_base_seconds, cap=config.backoff_max_seconds
            )
            retries.append((d.pk, now + dt.timedelta(seconds=delay), f"retrying: {o.reason}"[:500], delay))
    with connection.cursor() as cursor:
        if sent:
            # A provider receipt may have come first and moved the row on (delivered, failed):
            # the status stays as the receipt left it, but the send is recorded either way.
            cursor.execute(
                "UPDATE campaigns_delivery SET"
                " status = CASE WHEN status = 'sending' THEN 'sent' ELSE status END,"
                " sent_at = LEAST(COALESCE(sent_at, %s), %s), lease = NULL, posting_since = NULL,"
                " reason = CASE WHEN reason LIKE 'retrying:%%' OR reason LIKE 'waiting:%%' THEN '' ELSE reason END"
                " WHERE id = ANY(%s) AND lease = %s",
                [now, now, sent, token],
            )
        if retries:
            cursor.execute(
                "UPDATE campaigns_delivery d SET status = 'pending', not_before = t.not_before, reason = t.reason,"
                " queued_at = NULL, lease = NULL, posting_since = NULL"
                " FROM unnest(%s::bigint[], %s::timestamptz[], %s::text[]) AS t(id, not_before, reason)"
                " WHERE d.id = t.id AND d.lease = %s AND d.status = 'sending'",
                [[r[0] for r in retries], [r[1] for r in retries], [r[2] for r in retries], token],
            )
    if failed:
        _set_final(failed, DeliveryStatus.FAILED, token)
    if unknown:
        _set_final(unknown, DeliveryStatus.UNKNOWN, token)
    if retries:
        # One task for the lot, once the last of them is due (their jitter spreads them by at most
        # one backoff step; the sweep would queue them too, but a minute later).
        publish(
            f"the retry of {len(retries)} deliveries",
            tasks.deliver_batch,
            args=[[r[0] for r in retries]],
            countdown=max(r[3] for r in retries),
        )
    counts["sent"] += len(sent)
    counts["failed"] += len(failed)
    counts["retry"] += len(retries)
    counts["unknown"] += len(unknown)
