"""campaigns.errors: errors of the campaigns app."""
