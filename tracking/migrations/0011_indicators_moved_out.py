"""The indicator models moved to the `indicators` app with their tables: state only."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("tracking", "0010_order_amount_decimal"),
        ("indicators", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(
                    name="ActivityDay",
                ),
                migrations.DeleteModel(
                    name="ActivityFirstEvent",
                ),
                migrations.DeleteModel(
                    name="ActivityGap",
                ),
                migrations.DeleteModel(
                    name="ActivityPerson",
                ),
                migrations.DeleteModel(
                    name="ActivityTail",
                ),
                migrations.DeleteModel(
                    name="DailyIndicator",
                ),
                migrations.RemoveField(
                    model_name="funnelstep",
                    name="funnel",
                ),
                migrations.RemoveField(
                    model_name="goal",
                    name="created_by",
                ),
                migrations.RemoveField(
                    model_name="goalmonth",
                    name="goal",
                ),
                migrations.DeleteModel(
                    name="RetentionCell",
                ),
                migrations.DeleteModel(
                    name="RollupBacklog",
                ),
                migrations.DeleteModel(
                    name="RollupCursor",
                ),
                migrations.DeleteModel(
                    name="SearchDay",
                ),
                migrations.DeleteModel(
                    name="SearchMonth",
                ),
                migrations.DeleteModel(
                    name="Funnel",
                ),
                migrations.DeleteModel(
                    name="FunnelStep",
                ),
                migrations.DeleteModel(
                    name="Goal",
                ),
                migrations.DeleteModel(
                    name="GoalMonth",
                ),
            ]
        )
    ]
