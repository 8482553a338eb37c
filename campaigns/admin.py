"""campaigns.admin: admin of the campaigns app."""
