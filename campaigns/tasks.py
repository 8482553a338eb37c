"""campaigns.tasks: tasks of the campaigns app."""
