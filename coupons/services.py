"""coupons.services: services of the coupons app."""
