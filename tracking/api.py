"""tracking.api: api of the tracking app."""
