"""profiles.selectors: selectors of the profiles app."""
