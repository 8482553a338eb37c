"""tracking.admin: admin of the tracking app."""
