"""coupons.tasks: tasks of the coupons app."""
