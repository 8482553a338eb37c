"""profiles.services: services of the profiles app."""
