"""coupons.admin: admin of the coupons app."""
