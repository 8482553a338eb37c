from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    """Reach and learn: segments, A/B-tested campaigns, delivery and conversion feedback."""

    name = "campaigns"
    verbose_name = "Campaigns"
    role_permissions = {
        "Operations": ["campaigns.*"],
        "Customer service": ["campaigns.view_delivery"],
        "Customer service lead": ["campaigns.view_delivery"],
        "Analyst": ["campaigns.view_*"],
    }
