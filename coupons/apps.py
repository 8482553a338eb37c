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
