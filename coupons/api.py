"""coupons.api: api of the coupons app."""
