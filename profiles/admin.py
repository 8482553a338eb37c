"""profiles.admin: admin of the profiles app."""
