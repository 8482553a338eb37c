"""campaigns.api: api of the campaigns app."""
