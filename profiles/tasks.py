"""profiles.tasks: tasks of the profiles app."""
