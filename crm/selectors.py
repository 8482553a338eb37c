"""crm.selectors: selectors of the crm app."""
