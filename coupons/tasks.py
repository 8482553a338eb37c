"""Celery entry points of the coupons app: thin, idempotent wrappers over `coupons.services`.

Task names are `coupons.tasks.<function>`, as in every app. They used to be `coupons.<function>`:
those names stay registered as aliases at the end of this module, so a message queued under an
old name (by a process not yet upgraded, or before the upgrade) still runs."""

from __future__ import annotations

from celery import shared_task

from coupons import selectors, services
from coupons.models import CodeBatch, CouponRule, IssuanceJob


@shared_task(name="coupons.tasks.expire_coupons")
def expire_coupons() -> int:
    """Beat, every few minutes: expire coupons past their end and release their money."""
    return services.expire_due_coupons()


@shared_task(name="coupons.tasks.refresh_abuse_scores")
def refresh_abuse_scores() -> int:
    return services.refresh_abuse_scores()


@shared_task(name="coupons.tasks.fit_rule_uplift")
def fit_rule_uplift(rule_id: int) -> dict:
    rule = CouponRule.objects.filter(pk=rule_id).first()
    if rule is None:
        return {"rule": rule_id, "status": "gone"}
    fitted = services.fit_rule_uplift(rule=rule)
    return {"rule": rule_id, "status": fitted.status, "scored": fitted.scored}


@shared_task(name="coupons.tasks.run_issuance_job", acks_late=True)
def run_issuance_job(job_id: int, batch_size: int = 200) -> dict:
    job = IssuanceJob.objects.filter(pk=job_id).first()
    if job is None:
        return {"job": job_id, "status": "missing"}
    job = services.run_issuance_job(job=job, batch_size=batch_size)
    return {"job": job.pk, "status": job.status, "issued": job.issued, "refused": job.refused}


@shared_task(name="coupons.tasks.resume_issuance_jobs")
def resume_issuance_jobs() -> list[int]:
    """Beat: pick up jobs a crashed worker left unfinished (the targets say where they stopped).
    A failed job is not among them: it waits for an operator's retry."""
    ids = selectors.unfinished_issuance_job_ids()
    for job_id in ids:
        run_issuance_job.delay(job_id)
    return ids


@shared_task(name="coupons.tasks.generate_code_batch", acks_late=True)
def generate_code_batch(batch_id: int) -> dict:
    batch = CodeBatch.objects.filter(pk=batch_id).first()
    if batch is None:
        return {"batch": batch_id, "status": "missing"}
    batch = services.generate_batch_codes(batch=batch)
    return {"batch": batch.pk, "status": batch.status, "generated": batch.generated}


@shared_task(name="coupons.tasks.apply_refunds", acks_late=True)
def apply_refunds(refund_ids: list[int]) -> dict:
    """Queued when an ingestion batch that recorded refunds commits. Safe to run twice: an applied
    refund is left alone, and one a worker is applying right now is skipped."""
    return services.apply_refunds(refund_ids=refund_ids).as_dict()


@shared_task(name="coupons.tasks.apply_pending_refunds")
def apply_pending_refunds() -> dict:
    """Beat, every minute: refunds whose task was lost, and failed ones whose back-off has passed."""
    return services.apply_due_refunds().as_dict()


# --- the former names, kept for messages already queued under them ------------------------------


@shared_task(name="coupons.expire_coupons")
def expire_coupons_old_name() -> int:
    return expire_coupons()


@shared_task(name="coupons.run_issuance_job", acks_late=True)
def run_issuance_job_old_name(job_id: int, batch_size: int = 200) -> dict:
    return run_issuance_job(job_id, batch_size)


@shared_task(name="coupons.resume_issuance_jobs")
def resume_issuance_jobs_old_name() -> list[int]:
    return resume_issuance_jobs()


@shared_task(name="coupons.generate_code_batch", acks_late=True)
def generate_code_batch_old_name(batch_id: int) -> dict:
    return generate_code_batch(batch_id)
