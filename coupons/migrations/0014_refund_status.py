"""Refunds leave the ingestion transaction: ingestion records an order refund as `pending`, a
background step applies it (`applied`, with its outcome and time) or records why it could not
(`failed`, `error`, `attempts`, `failed_at`). The refunds recorded so far were applied when they
were recorded, so they are `applied`, recorded at the time they were applied, after one attempt.

The database's defaults (status `applied`, no error, no attempt, now) let a process of the former
version that still runs during the upgrade record a refund it applied: its row names only the
former columns and reads as applied.

Backwards is refused while a refund is pending or failed: the former schema has no place for
money still owed, and dropping it would lose it. Apply or settle those refunds first.
"""

import django.db.models.functions.datetime
import django.utils.timezone
from django.db import migrations, models

MARK_APPLIED = """
UPDATE coupons_orderrefund SET status = 'applied', created_at = applied_at, attempts = 1
"""
REFUSE_UNAPPLIED = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM coupons_orderrefund WHERE status <> 'applied') THEN
        RAISE EXCEPTION 'coupons: % order refund(s) are pending or failed; the former schema cannot hold them. '
                        'Apply them first (Coupons > Order refunds).',
                        (SELECT count(*) FROM coupons_orderrefund WHERE status <> 'applied');
    END IF;
END
$$
"""


class Migration(migrations.Migration):
    dependencies = [
        ("coupons", "0013_claim_follows_merges"),
    ]

    operations = [
        migrations.AddField(
            model_name="orderrefund",
            name="attempts",
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
        migrations.AddField(
            model_name="orderrefund",
            name="created_at",
            field=models.DateTimeField(
                db_default=django.db.models.functions.datetime.Now(), default=django.utils.timezone.now
            ),
        ),
        migrations.AddField(
            model_name="orderrefund",
            name="error",
            field=models.TextField(blank=True, db_default="", default="", help_text="Why the last attempt failed"),
        ),
        migrations.AddField(
            model_name="orderrefund",
            name="failed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="orderrefund",
            name="status",
            field=models.CharField(
                choices=[("pending", "Pending"), ("applied", "Applied"), ("failed", "Failed")],
                db_default="applied",
                default="pending",
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="orderrefund",
            name="amount",
            field=models.DecimalField(
                blank=True,
                decimal_places=2,
                help_text="Refunded amount, at most the order's; empty: the whole order",
                max_digits=14,
                null=True,
            ),
        ),
        migrations.AlterField(
            model_name="orderrefund",
            name="applied_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name="orderrefund",
            name="outcome",
            field=models.CharField(
                blank=True,
                choices=[
                    ("rolled_back", "Rolled back (full refund)"),
                    ("partial", "Revenue reduced (partial refund)"),
                ],
                max_length=16,
                null=True,
            ),
        ),
        # After the columns admit unapplied rows; backwards, before anything is undone, a schema
        # holding unapplied refunds stops the downgrade.
        migrations.RunSQL(MARK_APPLIED, REFUSE_UNAPPLIED),
        migrations.AddIndex(
            model_name="orderrefund",
            index=models.Index(
                condition=models.Q(("status", "applied"), _negated=True),
                fields=["status", "id"],
                name="orderrefund_unapplied",
            ),
        ),
        migrations.AddConstraint(
            model_name="orderrefund",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("status", "applied"), ("outcome__isnull", False), ("applied_at__isnull", False)),
                    models.Q(
                        models.Q(("status", "applied"), _negated=True),
                        ("outcome__isnull", True),
                        ("applied_at__isnull", True),
                    ),
                    _connector="OR",
                ),
                name="orderrefund_applied_has_outcome",
            ),
        ),
    ]
