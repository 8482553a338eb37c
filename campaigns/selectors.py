"""campaigns.selectors: selectors of the campaigns app."""
