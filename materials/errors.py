"""Refusals of the material library, each with a code clients can branch on."""

from config.errors import Conflict, NotFound, Refused


class MaterialNotFound(NotFound):
    reason = "MATERIAL_NOT_FOUND"


class VersionNotFound(NotFound):
    reason = "MATERIAL_VERSION_NOT_FOUND"


class VersionFrozen(Conflict):
    """An approved version is what campaigns sent: a change is a new version."""

    reason = "VERSION_APPROVED"


class InvalidTemplate(Refused):
    """A template that does not parse, names an unknown variable without a default, or exceeds
    the channel's limit; `problems` lists each with its field, line and reason. Invalid input,
    so a 400 like any other refused field."""

    status_code = 400
    reason = "INVALID_TEMPLATE"


class NotAllowed(Refused):
    reason = "NOT_ALLOWED"


class ProfileNotFound(NotFound):
    reason = "PROFILE_NOT_FOUND"
