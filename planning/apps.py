from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class PlanningConfig(AppConfig):
    """Run the operation by goals: tactics that serve a goal, phases with priorities and team tasks,
    boards, and monthly reviews against the natural-growth baseline and the campaigns' holdouts."""

    name = "planning"
    verbose_name = _("Planning")
    role_permissions = {
        "Operations": ["planning.*"],
        "Analyst": ["planning.view_*"],
    }
