"""crm.tasks: tasks of the crm app."""
