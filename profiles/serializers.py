"""profiles.serializers: serializers of the profiles app."""
