"""Refunds leave the ingestion transaction: ingestion records an order refund as `pending`, a
background step applies it (`applied`, with its outcome and time) or records why it could not
(`failed`, `error`, `attempts`, `failed_at`). The refunds recorded so far were applied when they
were recorded, so they are `applied`, recorded at the time they were applied, after one attempt.

Backwards, refunds not applied yet are deleted (the former schema has no place for them): their
events stay stored, and the former `apply_refund(event_id=, order_id=, amount=)` applies one by hand.
"""

import django.utils.timezone
from django.db import migrations, models

MARK_APPLIED = """
UPDATE coupons_orderrefund SET status = 'applied', created_at = applied_at, attempts = 1
"""
DROP_UNAPPLIED = """
DELETE FROM coupons_orderrefund WHERE status <> 'applied'
"""


class Migration(migrations.Migration):
    dependencies = [
        ("coupons", "0013_claim_follows_merges"),
    ]

    operations = [
        migrations.AddField(
            model_name="orderrefund",
            name="attempts",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="orderrefund",
            name="created_at",
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.AddField(
            model_name="orderrefund",
            name="error",
            field=models.TextField(blank=True, default="", help_text="Why the last attempt failed"),
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
        # After the columns admit unapplied rows, so that backwards they are gone before they no longer do.
        migrations.RunSQL(MARK_APPLIED, DROP_UNAPPLIED),
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
