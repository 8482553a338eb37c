"""crm.errors: errors of the crm app."""
