"""Audit actions in one grammar, `<app>.<object>_<past participle>` (`coupons.issuance_job_resumed`):
the rows already written are renamed with the code, so filtering the history by action finds old
and new entries alike. Reversible: each new name comes from exactly one old one."""

from django.db import migrations

RENAMES = {
    "api_key.created": "access.api_key_created",
    "api_key.revoked": "access.api_key_revoked",
    "goal.created": "indicators.goal_created",
    "goal.redecomposed": "indicators.goal_redecomposed",
    "goal.deleted": "indicators.goal_deleted",
    "coupon_rule.created": "coupons.coupon_rule_created",
    "coupon_rule.changed": "coupons.coupon_rule_changed",
    "coupon_rule.budget_changed": "coupons.coupon_rule_budget_changed",
    "coupon_rule.active": "coupons.coupon_rule_activated",
    "coupon_rule.paused": "coupons.coupon_rule_paused",
    "coupon_rule.ended": "coupons.coupon_rule_ended",
    "coupon.revoked": "coupons.coupon_revoked",
    "redemption.rolled_back": "coupons.redemption_rolled_back",
    "code_batch.created": "coupons.code_batch_created",
    "code_batch.retried": "coupons.code_batch_retried",
    "code_batch.exported": "coupons.code_batch_exported",
    "issuance_job.created": "coupons.issuance_job_created",
    "issuance_job.retried": "coupons.issuance_job_retried",
    "issuance_job.resumed": "coupons.issuance_job_resumed",
    "campaigns.create_segment": "campaigns.segment_created",
    "campaigns.change_segment": "campaigns.segment_changed",
    "campaigns.change_channel": "campaigns.channel_changed",
    "campaigns.create_campaign": "campaigns.campaign_created",
    "campaigns.change_campaign": "campaigns.campaign_changed",
    "campaigns.change_variants": "campaigns.variants_changed",
    "campaigns.launch": "campaigns.campaign_launched",
    "campaigns.pause": "campaigns.campaign_paused",
    "campaigns.resume": "campaigns.campaign_resumed",
    "campaigns.cancel": "campaigns.campaign_cancelled",
    "campaigns.fail": "campaigns.campaign_failed",
    "campaigns.retry": "campaigns.campaign_retried",
    "campaigns.complete": "campaigns.campaign_completed",
    "campaigns.clone": "campaigns.campaign_cloned",
    "campaigns.rollout": "campaigns.campaign_rolled_out",
    "campaigns.send_test_message": "campaigns.test_message_sent",
    "campaigns.settle_unknown_delivery": "campaigns.unknown_delivery_settled",
}


def _rename(apps, mapping: dict[str, str]) -> None:
    AuditEntry = apps.get_model("access", "AuditEntry")
    for old, new in mapping.items():
        AuditEntry.objects.filter(action=old).update(action=new)


def forward(apps, schema_editor):
    _rename(apps, RENAMES)


def backward(apps, schema_editor):
    _rename(apps, {new: old for old, new in RENAMES.items()})


class Migration(migrations.Migration):
    dependencies = [("access", "0002_roles")]

    operations = [migrations.RunPython(forward, backward)]
