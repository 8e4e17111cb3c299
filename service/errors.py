"""One error hierarchy, mapped to HTTP in one table (``HTTP_STATUS``).

ServiceError
├── ConfigError            bad settings at start-up (never reaches HTTP)
├── InvalidParams     400  a request field breaks a rule; the message names field and rule
├── PayloadTooLarge   413  the body or an image is over a limit
├── NotImplementedYet 501  a route or stage this build does not run yet
├── NotFound          404  no such job or output
├── IdempotencyConflict 409  the same key was used with another request body
├── Unauthorized      401  admin token missing or wrong
└── StorageError      503  the object store failed after retries
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error of this service."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(ServiceError):
    """The configuration is invalid."""


class InvalidParams(ServiceError):
    """A request parameter is invalid."""

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


class PayloadTooLarge(ServiceError):
    """The request is too large."""


class NotImplementedYet(ServiceError):
    """This feature is not available in this build."""


class NotFound(ServiceError):
    """Not found."""


class IdempotencyConflict(ServiceError):
    """This idempotency key was already used with a different request."""


class Unauthorized(ServiceError):
    """A valid admin token is required."""


class StorageError(ServiceError):
    """The object store is unavailable."""


HTTP_STATUS: dict[type[ServiceError], int] = {
    InvalidParams: 400,
    Unauthorized: 401,
    NotFound: 404,
    IdempotencyConflict: 409,
    PayloadTooLarge: 413,
    NotImplementedYet: 501,
    StorageError: 503,
}
