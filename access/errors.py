"""Error codes of the access layer."""

from config.errors import Conflict


class ApiKeyNameTaken(Conflict):
    reason = "API_KEY_NAME_TAKEN"
