"""coupons.serializers: serializers of the coupons app."""
