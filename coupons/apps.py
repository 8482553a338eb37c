from django.apps import AppConfig


class CouponsConfig(AppConfig):
    """Operate: coupon rules with budgets, issuance, validation, redemption and rollback."""

    name = "coupons"
    verbose_name = "Coupons"
    role_permissions = {
        "Operations": ["coupons.*"],
        "Customer service": ["coupons.view_coupon"],
        "Customer service lead": ["coupons.view_coupon"],
        "Analyst": ["coupons.view_*"],
    }

    def ready(self) -> None:
        from coupons.selectors import lookup_section
        from profiles.lookup import register_section

        register_section("coupons", lookup_section)
