"""crm.admin: admin of the crm app."""
