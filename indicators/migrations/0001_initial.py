"""The indicator models, moved from `tracking` with their tables: state only, no data moves."""

import django.contrib.postgres.fields
import django.db.models.deletion
import django.db.models.functions.datetime
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("tracking", "0010_order_amount_decimal"),
    ]

    # The tables exist (made by `tracking`'s migrations); only Django's picture of them moves.
    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="ActivityFirstEvent",
                    fields=[
                        (
                            "pk",
                            models.CompositePrimaryKey(
                                "person_key", "name", blank=True, editable=False, primary_key=True, serialize=False
                            ),
                        ),
                        ("person_key", models.CharField(max_length=128)),
                        ("name", models.CharField(max_length=64)),
                        ("first_day", models.DateField()),
                    ],
                    options={
                        "db_table": "tracking_activityfirstevent",
                    },
                ),
                migrations.CreateModel(
                    name="ActivityGap",
                    fields=[
                        (
                            "pk",
                            models.CompositePrimaryKey(
                                "day", "next_day", blank=True, editable=False, primary_key=True, serialize=False
                            ),
                        ),
                        ("day", models.DateField()),
                        ("next_day", models.DateField()),
                        ("users", models.IntegerField(default=0)),
                    ],
                    options={
                        "db_table": "tracking_activitygap",
                    },
                ),
                migrations.CreateModel(
                    name="ActivityTail",
                    fields=[
                        (
                            "pk",
                            models.CompositePrimaryKey(
                                "bucket",
                                "person_key",
                                "day",
                                blank=True,
                                editable=False,
                                primary_key=True,
                                serialize=False,
                            ),
                        ),
                        ("bucket", models.SmallIntegerField()),
                        ("day", models.DateField()),
                        ("person_key", models.CharField(max_length=128)),
                        (
                            "names",
                            django.contrib.postgres.fields.ArrayField(
                                base_field=models.CharField(max_length=64), size=None
                            ),
                        ),
                        (
                            "ats",
                            django.contrib.postgres.fields.ArrayField(base_field=models.DateTimeField(), size=None),
                        ),
                        (
                            "ids",
                            django.contrib.postgres.fields.ArrayField(base_field=models.BigIntegerField(), size=None),
                        ),
                    ],
                    options={
                        "db_table": "tracking_activitytail",
                    },
                ),
                migrations.CreateModel(
                    name="DailyIndicator",
                    fields=[
                        ("day", models.DateField(primary_key=True, serialize=False)),
                        ("events", models.BigIntegerField(default=0)),
                        ("active_users", models.IntegerField(default=0, verbose_name="DAU")),
                        ("weekly_active_users", models.IntegerField(default=0, verbose_name="WAU")),
                        ("monthly_active_users", models.IntegerField(default=0, verbose_name="MAU")),
                        (
                            "new_users",
                            models.IntegerField(default=0, help_text="People whose first activity was on the day."),
                        ),
                        ("orders", models.IntegerField(default=0)),
                        ("refunds", models.IntegerField(default=0)),
                        ("paid_amount", models.DecimalField(decimal_places=2, default=0, max_digits=20)),
                        ("refunded_amount", models.DecimalField(decimal_places=2, default=0, max_digits=20)),
                        ("revenue", models.DecimalField(decimal_places=2, default=0, max_digits=20)),
                        ("paying_users", models.IntegerField(default=0)),
                        (
                            "repeat_buyers",
                            models.IntegerField(
                                default=0, help_text="Paying people of the day who had paid on an earlier day."
                            ),
                        ),
                        ("updated_at", models.DateTimeField(blank=True, null=True)),
                    ],
                    options={
                        "verbose_name": "indicator dashboard",
                        "verbose_name_plural": "indicator dashboards",
                        "db_table": "tracking_dailyindicator",
                    },
                ),
                migrations.CreateModel(
                    name="RetentionCell",
                    fields=[
                        (
                            "pk",
                            models.CompositePrimaryKey(
                                "basis",
                                "granularity",
                                "cohort",
                                "period",
                                blank=True,
                                editable=False,
                                primary_key=True,
                                serialize=False,
                            ),
                        ),
                        (
                            "basis",
                            models.CharField(
                                choices=[
                                    ("activity", "First activity; retained when active"),
                                    ("purchase", "First order; retained when ordering"),
                                ],
                                max_length=16,
                            ),
                        ),
                        (
                            "granularity",
                            models.CharField(
                                choices=[("day", "Day"), ("week", "Week (Monday)"), ("month", "Month")], max_length=8
                            ),
                        ),
                        ("cohort", models.DateField()),
                        ("period", models.IntegerField()),
                        ("users", models.IntegerField(default=0)),
                    ],
                    options={
                        "db_table": "tracking_retentioncell",
                    },
                ),
                migrations.CreateModel(
                    name="RollupState",
                    fields=[
                        ("name", models.CharField(max_length=32, primary_key=True, serialize=False)),
                        ("last_event_id", models.BigIntegerField(default=0)),
                        ("events_folded", models.BigIntegerField(default=0)),
                        ("updated_at", models.DateTimeField(blank=True, null=True)),
                    ],
                    options={
                        "db_table": "tracking_rollupcursor",
                    },
                ),
                migrations.CreateModel(
                    name="SearchDay",
                    fields=[
                        (
                            "pk",
                            models.CompositePrimaryKey(
                                "day", "query", blank=True, editable=False, primary_key=True, serialize=False
                            ),
                        ),
                        ("day", models.DateField()),
                        ("query", models.CharField(max_length=200)),
                        ("searches", models.IntegerField(default=0)),
                        (
                            "zero_results",
                            models.IntegerField(default=0, help_text="Searches whose `results` was 0 or empty."),
                        ),
                    ],
                    options={
                        "db_table": "tracking_searchday",
                    },
                ),
                migrations.CreateModel(
                    name="SearchMonth",
                    fields=[
                        (
                            "pk",
                            models.CompositePrimaryKey(
                                "month", "query", blank=True, editable=False, primary_key=True, serialize=False
                            ),
                        ),
                        ("month", models.DateField(help_text="First day of the month")),
                        ("query", models.CharField(max_length=200)),
                        ("searches", models.IntegerField(default=0)),
                        ("zero_results", models.IntegerField(default=0)),
                    ],
                    options={
                        "db_table": "tracking_searchmonth",
                    },
                ),
                migrations.CreateModel(
                    name="ActivityDay",
                    fields=[
                        (
                            "pk",
                            models.CompositePrimaryKey(
                                "person_key", "day", blank=True, editable=False, primary_key=True, serialize=False
                            ),
                        ),
                        ("person_key", models.CharField(max_length=128)),
                        ("day", models.DateField()),
                        ("events", models.IntegerField(default=0)),
                        ("orders", models.IntegerField(default=0, help_text="`order_paid` events.")),
                        ("refunds", models.IntegerField(default=0, help_text="`order_refunded` events.")),
                        ("paid_amount", models.DecimalField(decimal_places=2, default=0, max_digits=20)),
                        ("refunded_amount", models.DecimalField(decimal_places=2, default=0, max_digits=20)),
                        ("first_at", models.DateTimeField()),
                        ("last_at", models.DateTimeField()),
                    ],
                    options={
                        "db_table": "tracking_activityday",
                        "indexes": [models.Index(fields=["day"], name="activity_day_day")],
                    },
                ),
                migrations.CreateModel(
                    name="ActivityPerson",
                    fields=[
                        ("person_key", models.CharField(max_length=128, primary_key=True, serialize=False)),
                        ("first_day", models.DateField()),
                        ("last_day", models.DateField()),
                        ("first_order_day", models.DateField(blank=True, null=True)),
                    ],
                    options={
                        "db_table": "tracking_activityperson",
                        "indexes": [
                            models.Index(fields=["first_day"], name="activity_person_first"),
                            models.Index(fields=["first_order_day"], name="activity_person_first_order"),
                            models.Index(fields=["last_day"], name="activity_person_last"),
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="Funnel",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("name", models.CharField(max_length=120, unique=True)),
                        ("description", models.TextField(blank=True, default="")),
                        (
                            "window_hours",
                            models.PositiveIntegerField(
                                default=24,
                                help_text="Every later step must happen within this many hours of the first.",
                            ),
                        ),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                    ],
                    options={
                        "db_table": "tracking_funnel",
                        "constraints": [
                            models.CheckConstraint(
                                condition=models.Q(("window_hours__gte", 1)), name="funnel_window_positive"
                            )
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="Goal",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("name", models.CharField(max_length=200)),
                        (
                            "indicator",
                            models.CharField(help_text="Key of a registered indicator, e.g. dau", max_length=64),
                        ),
                        (
                            "fold",
                            models.CharField(
                                choices=[
                                    ("sum", "Sum of the days"),
                                    ("mean", "Mean of the days"),
                                    ("last", "Value on the last day"),
                                ],
                                editable=False,
                                max_length=8,
                            ),
                        ),
                        (
                            "unit",
                            models.CharField(
                                choices=[
                                    ("count", "Count"),
                                    ("users", "Users"),
                                    ("money", "Money"),
                                    ("ratio", "Ratio"),
                                ],
                                editable=False,
                                max_length=8,
                            ),
                        ),
                        ("period", models.CharField(choices=[("year", "Year"), ("quarter", "Quarter")], max_length=8)),
                        ("year", models.PositiveSmallIntegerField()),
                        (
                            "quarter",
                            models.PositiveSmallIntegerField(
                                blank=True, help_text="1 to 4 for a quarterly goal", null=True
                            ),
                        ),
                        ("target", models.DecimalField(decimal_places=4, max_digits=20)),
                        (
                            "profile",
                            models.CharField(
                                choices=[
                                    ("even", "Evenly"),
                                    ("weights", "By typed weights per month"),
                                    ("last_year", "Shaped like last year's actuals"),
                                ],
                                default="even",
                                max_length=16,
                            ),
                        ),
                        (
                            "weights",
                            models.JSONField(
                                blank=True, default=list, help_text="The weights per month the operator typed"
                            ),
                        ),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        (
                            "created_by",
                            models.ForeignKey(
                                blank=True,
                                editable=False,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "db_table": "tracking_goal",
                        "ordering": ["-year", "-quarter", "name"],
                    },
                ),
                migrations.CreateModel(
                    name="GoalMonth",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("month", models.DateField(help_text="First day of the month")),
                        ("weight", models.DecimalField(decimal_places=6, max_digits=20)),
                        ("target", models.DecimalField(decimal_places=4, max_digits=20)),
                        (
                            "goal",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="month_targets",
                                to="indicators.goal",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "tracking_goalmonth",
                        "ordering": ["goal", "month"],
                    },
                ),
                migrations.CreateModel(
                    name="RollupBacklog",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("first_event_id", models.BigIntegerField()),
                        ("last_event_id", models.BigIntegerField()),
                        ("created_at", models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                    ],
                    options={
                        "verbose_name": "rollup backlog run",
                        "db_table": "tracking_rollupbacklog",
                        "constraints": [
                            models.CheckConstraint(
                                condition=models.Q(("last_event_id__gte", models.F("first_event_id"))),
                                name="rollup_backlog_run_order",
                            )
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="FunnelStep",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "position",
                            models.PositiveSmallIntegerField(help_text="1 for the first step, then 2, 3, ..."),
                        ),
                        ("event_name", models.CharField(max_length=64)),
                        ("label", models.CharField(blank=True, default="", max_length=120)),
                        (
                            "funnel",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="steps",
                                to="indicators.funnel",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "tracking_funnelstep",
                        "ordering": ["funnel", "position"],
                        "constraints": [
                            models.UniqueConstraint(fields=("funnel", "position"), name="funnel_step_position_unique")
                        ],
                    },
                ),
                migrations.AddConstraint(
                    model_name="goal",
                    constraint=models.CheckConstraint(
                        condition=models.Q(("target__gt", 0)), name="goal_target_positive"
                    ),
                ),
                migrations.AddConstraint(
                    model_name="goal",
                    constraint=models.CheckConstraint(
                        condition=models.Q(("year__gte", 2000), ("year__lte", 2200)), name="goal_year_in_range"
                    ),
                ),
                migrations.AddConstraint(
                    model_name="goal",
                    constraint=models.CheckConstraint(
                        condition=models.Q(
                            models.Q(("period", "year"), ("quarter__isnull", True)),
                            models.Q(("period", "quarter"), ("quarter__gte", 1), ("quarter__lte", 4)),
                            _connector="OR",
                        ),
                        name="goal_period_valid",
                    ),
                ),
                migrations.AddConstraint(
                    model_name="goal",
                    constraint=models.CheckConstraint(
                        condition=models.Q(("fold__in", ["sum", "mean", "last"])), name="goal_fold_known"
                    ),
                ),
                migrations.AddConstraint(
                    model_name="goal",
                    constraint=models.CheckConstraint(
                        condition=models.Q(("profile__in", ["even", "weights", "last_year"])), name="goal_profile_known"
                    ),
                ),
                migrations.AddConstraint(
                    model_name="goal",
                    constraint=models.UniqueConstraint(
                        fields=("indicator", "period", "year", "quarter"),
                        name="goal_one_per_period",
                        nulls_distinct=False,
                    ),
                ),
                migrations.AddConstraint(
                    model_name="goalmonth",
                    constraint=models.UniqueConstraint(fields=("goal", "month"), name="goalmonth_one_per_month"),
                ),
                migrations.AddConstraint(
                    model_name="goalmonth",
                    constraint=models.CheckConstraint(
                        condition=models.Q(("month__day", 1)), name="goalmonth_first_of_month"
                    ),
                ),
                migrations.AddConstraint(
                    model_name="goalmonth",
                    constraint=models.CheckConstraint(
                        condition=models.Q(("target__gte", 0)), name="goalmonth_target_gte_0"
                    ),
                ),
                migrations.AddConstraint(
                    model_name="goalmonth",
                    constraint=models.CheckConstraint(
                        condition=models.Q(("weight__gte", 0)), name="goalmonth_weight_gte_0"
                    ),
                ),
            ]
        )
    ]
