from django.db import migrations, models


class Migration(migrations.Migration):
    """The churn page reads each sampled person's last days before the window's end: with the
    person before the day in the key they are one short backward index scan per person instead
    of a sort of every tail of the window."""

    dependencies = [
        ("tracking", "0008_event_id_blocks"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE tracking_activitytail DROP CONSTRAINT tracking_activitytail_pkey, "
                    "ADD CONSTRAINT tracking_activitytail_pkey PRIMARY KEY (bucket, person_key, day)",
                    reverse_sql="ALTER TABLE tracking_activitytail DROP CONSTRAINT tracking_activitytail_pkey, "
                    "ADD CONSTRAINT tracking_activitytail_pkey PRIMARY KEY (bucket, day, person_key)",
                )
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="activitytail",
                    name="pk",
                    field=models.CompositePrimaryKey(
                        "bucket", "person_key", "day", blank=True, editable=False, primary_key=True, serialize=False
                    ),
                )
            ],
        )
    ]
