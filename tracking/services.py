"""tracking.services: services of the tracking app."""
