"""tracking.tasks: tasks of the tracking app."""
