from django.db import migrations

# A night rewrites a few ten thousand of a million rows, about half of them only in columns
# without an index (scores, spend, last order). Room left on every page lets those updates stay
# on their page without new index entries (heap-only tuples):
# https://www.postgresql.org/docs/current/storage-hot.html
# Pages written from now on keep the room; pages already full get it as they are rewritten.


class Migration(migrations.Migration):
    dependencies = [("crm", "0007_lean_value_constraints_and_indexes")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE crm_customervalue SET (fillfactor = 90)",
            "ALTER TABLE crm_customervalue RESET (fillfactor)",
        )
    ]
