from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class CouponsConfig(AppConfig):
    """Operate: coupon rules with budgets, issuance, validation, redemption and rollback."""

    name = "coupons"
    verbose_name = _("Coupons")
    role_permissions = {
        "Operations": ["coupons.*"],
        "Customer service": ["coupons.view_coupon"],
        "Customer service lead": ["coupons.view_coupon"],
        "Analyst": ["coupons.view_*"],
    }

    def ready(self) -> None:
        from coupons.selectors import lookup_section, lookup_summary_part
        from coupons.services import on_events_ingested, on_profiles_merged
        from profiles.lookup import register_merge_listener, register_section, register_summary_part
        from tracking.hooks import register_ingest_listener

        register_section("coupons", lookup_section)
        register_summary_part("coupons", lookup_summary_part, order=20)
        register_merge_listener("coupons", on_profiles_merged)
        # Refunds of orders that used coupons give their money back (`order_refunded`).
        register_ingest_listener("coupons.refunds", on_events_ingested)
        _register_indicators()


def _register_indicators() -> None:
    """Cross-domain daily indicators, so that goals and trends in `tracking` can use them."""
    from coupons import selectors
    from indicators.registry import Fold, Indicator, Unit, register_indicator

    for indicator in (
        Indicator(
            "coupon_spend",
            _("Coupon spend"),
            Unit.MONEY,
            Fold.SUM,
            selectors.daily_coupon_spend,
            _("Discounts given by coupon redemptions that still stand (rolled-back orders excluded)."),
        ),
        Indicator(
            "coupons_redeemed",
            _("Coupons redeemed"),
            Unit.COUNT,
            Fold.SUM,
            selectors.daily_coupons_redeemed,
            _("Coupon redemptions per day that still stand."),
        ),
        Indicator(
            "coupons_issued",
            _("Coupons issued"),
            Unit.COUNT,
            Fold.SUM,
            selectors.daily_coupons_issued,
            _("Coupons issued per day, partner codes included."),
        ),
        Indicator(
            "coupon_order_revenue",
            _("Revenue of coupon orders"),
            Unit.MONEY,
            Fold.SUM,
            selectors.daily_coupon_order_revenue,
            _("Order amounts of the orders that used a coupon."),
        ),
    ):
        register_indicator(indicator)
