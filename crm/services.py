"""crm.services: services of the crm app."""
