"""campaigns.services: services of the campaigns app."""
