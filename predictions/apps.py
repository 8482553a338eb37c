from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class PredictionsConfig(AppConfig):
    """Predictions: lifetime value, probability alive, churn risk and predicted-value tiers."""

    name = "predictions"
    verbose_name = _("Predictions")
    role_permissions = {
        "Operations": [
            "predictions.view_*",
            "predictions.recompute_predictions",
            "predictions.change_predictedtier",
            "predictions.add_predictedtier",
            "predictions.change_predictionsettings",
        ],
        "Customer service": ["predictions.view_prediction"],
        "Customer service lead": ["predictions.view_prediction"],
        "Analyst": ["predictions.view_*"],
    }

    def ready(self) -> None:
        from crm import pages
        from predictions import selectors
        from profiles import lookup

        lookup.register_section("predictions", selectors.predictions_section)
        lookup.register_profile_field("predictions", selectors.predictions_of)
        pages.register_tier_panel("predicted-tiers", selectors.tier_panel)
