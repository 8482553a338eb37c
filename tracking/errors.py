"""tracking.errors: errors of the tracking app."""
