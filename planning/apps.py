from django.apps import AppConfig


class PlanningConfig(AppConfig):
    """Run the operation by goals: tactics that serve a goal, phases with priorities and team tasks,
    boards, and monthly reviews against the natural-growth baseline and the campaigns' holdouts."""

    name = "planning"
    verbose_name = "Planning"
    role_permissions = {
        "Operations": ["planning.*"],
        "Analyst": ["planning.view_*"],
    }
