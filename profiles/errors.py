"""profiles.errors: errors of the profiles app."""
