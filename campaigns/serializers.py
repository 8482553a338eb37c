"""campaigns.serializers: serializers of the campaigns app."""
