"""coupons.selectors: selectors of the coupons app."""
