"""profiles.api: api of the profiles app."""
