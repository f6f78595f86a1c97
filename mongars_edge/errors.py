"""One exception base; the edges translate it to HTTP statuses, CLI exit codes or wire errors."""

from __future__ import annotations


class MongarsError(Exception):
    """Base of every error the box raises on purpose; its message is meant for users."""

    #: HTTP status used by the web edge when nothing more specific applies.
    http_status = 500
    #: Short machine-readable kind, used in logs, metrics and error bodies.
    kind = "internal_error"
    #: Exit status used by the CLI edge.
    exit_code = 1


class ConfigError(MongarsError, ValueError):
    """A setting has a value that is not allowed."""

    kind = "config_error"
    exit_code = 2

    def __init__(self, setting: str, value: object, allowed: str, source: str = "") -> None:
        self.setting = setting
        self.value = value
        self.allowed = allowed
        self.source = source
        where = f" (from {source})" if source else ""
        super().__init__(f"setting {setting!r} has value {value!r}{where}; allowed: {allowed}")


class ConfigFileError(MongarsError, ValueError):
    """The config file cannot be read or parsed."""

    kind = "config_error"
    exit_code = 2


class NotFoundError(MongarsError, LookupError):
    """Something the user named does not exist."""

    http_status = 404
    kind = "not_found"


class InvalidRequestError(MongarsError, ValueError):
    """The request is malformed or asks for something impossible; `param` names the field
    (OpenAI's error shape carries it)."""

    http_status = 400
    kind = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnavailableError(MongarsError):
    """A service needed for the request is not running on this box."""

    http_status = 503
    kind = "unavailable"
