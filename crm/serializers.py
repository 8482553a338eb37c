"""crm.serializers: serializers of the crm app."""
