"""coupons.errors: errors of the coupons app."""
