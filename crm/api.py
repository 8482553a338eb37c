"""crm.api: api of the crm app."""
