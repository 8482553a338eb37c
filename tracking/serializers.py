"""tracking.serializers: serializers of the tracking app."""
