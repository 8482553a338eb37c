from django.db import migrations


class Migration(migrations.Migration):
    """Event ids come in blocks of 1000: one `nextval` reserves a whole batch's ids
    (`tracking.services._reserve_ids`), so concurrent batches never interleave their ids and each
    stored batch is one run of consecutive ids. A row inserted one at a time (the ORM) uses one
    id of its block; ids are not counted, only ordered, so the gaps cost nothing."""

    dependencies = [
        ("tracking", "0007_behaviour_rollups"),
    ]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE tracking_event ALTER COLUMN id SET INCREMENT BY 1000",
            reverse_sql="ALTER TABLE tracking_event ALTER COLUMN id SET INCREMENT BY 1",
        )
    ]
