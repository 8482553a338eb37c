from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class CampaignsConfig(AppConfig):
    """Reach and learn: segments, A/B-tested campaigns, delivery and conversion feedback."""

    name = "campaigns"
    verbose_name = _("Campaigns")
    role_permissions = {
        # Everything but `set_channel_gateway` (where deliveries and the token go).
        "Operations": [
            "campaigns.add_*",
            "campaigns.change_*",
            "campaigns.delete_*",
            "campaigns.view_*",
            "campaigns.send_campaign",
        ],
        "Customer service": ["campaigns.view_delivery"],
        "Customer service lead": ["campaigns.view_delivery"],
        "Analyst": ["campaigns.view_*"],
    }

    def ready(self) -> None:
        from campaigns import selectors, services
        from coupons.audiences import register_segment_checker, register_segment_resolver
        from coupons.incremental import register_holdout_members_sql
        from materials.selectors import register_history_provider
        from materials.services import register_test_sender
        from predictions.features import register_feature
        from profiles.lookup import register_merge_listener, register_section
        from tracking.hooks import register_ingest_listener

        register_ingest_listener("campaigns.triggers", services.on_events_ingested)
        register_merge_listener("campaigns", services.on_profiles_merged)
        register_section("messages", selectors.deliveries_for_profile)
        register_segment_resolver(selectors.segment_profile_ids)
        register_segment_checker(selectors.segment_exists)
        register_holdout_members_sql(selectors.HOLDOUT_MEMBERS_SQL)
        register_feature("messages_30d", selectors.MESSAGES_30D_SQL)
        register_history_provider(selectors.material_history)
        register_test_sender(services.send_material_test)
