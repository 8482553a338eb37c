"""tracking.selectors: selectors of the tracking app."""
