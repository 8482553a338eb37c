from django.db import IntegrityError, migrations, models, transaction

CONSTRAINT = (
    "ALTER TABLE tracking_event ADD CONSTRAINT event_order_amount_decimal CHECK ("
    "NOT (name IN ('order_paid', 'order_refunded')) OR (properties -> 'amount') IS NULL "
    "OR (properties ->> 'amount') ~ '^[0-9]{1,15}(\\.[0-9]{1,12})?$') NOT VALID"
)


def validate(apps, schema_editor) -> None:
    """Events are never rewritten: where older order events carry an amount of another form, the
    constraint still holds for every new event but stays unvalidated, and the sums over orders
    keep matching each amount against the pattern (`tracking.selectors.order_amounts_validated`)."""
    connection = schema_editor.connection
    try:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute("ALTER TABLE tracking_event VALIDATE CONSTRAINT event_order_amount_decimal")
    except IntegrityError:
        print(
            "\n  tracking_event: some stored order events have an amount that is not a decimal string;"
            "\n  constraint event_order_amount_decimal holds for new events only (NOT VALID),"
            "\n  and those amounts count as 0."
        )


class Migration(migrations.Migration):
    # Adding the constraint takes the table's exclusive lock for a moment; validating it scans every
    # event under a lock that lets ingestion go on. One transaction would hold the first lock for
    # the whole scan.
    atomic = False

    dependencies = [
        ("tracking", "0009_activity_tail_person_order"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    CONSTRAINT, reverse_sql="ALTER TABLE tracking_event DROP CONSTRAINT event_order_amount_decimal"
                ),
                migrations.RunPython(validate, migrations.RunPython.noop),
            ],
            state_operations=[
                migrations.AddConstraint(
                    model_name="event",
                    constraint=models.CheckConstraint(
                        condition=models.Q(
                            models.Q(("name__in", ("order_paid", "order_refunded")), _negated=True),
                            ("properties__amount__isnull", True),
                            ("properties__amount__regex", "^[0-9]{1,15}(\\.[0-9]{1,12})?$"),
                            _connector="OR",
                        ),
                        name="event_order_amount_decimal",
                    ),
                )
            ],
        )
    ]
