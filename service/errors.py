"""One error hierarchy, mapped to HTTP in one table (``HTTP_STATUS``).

ServiceError
├── ConfigError            bad settings at start-up (never reaches HTTP)
├── InvalidParams     400  a request field breaks a rule; the message names field and rule
├── PayloadTooLarge   413  the body or an image is over a limit
├── UnsupportedMediaType 415  a body of a type the route does not read
├── NotImplementedYet 501  a route or stage this build does not run yet
├── NotFound          404  no such job or output
├── RequestTimeout    408  the client stopped sending its request halfway
├── IdempotencyConflict 409  the same key was used with another request body
├── Conflict          409  the request races work still under way (a conversion, a job needing a model)
├── Unauthorized      401  admin token or API key missing or wrong
├── Forbidden         403  a revoked key, or a key that is not an admin's on an admin route
├── TooManyRequests   429  a key's quota is used up; answered with ``Retry-After``
└── Unavailable       503  a dependency is down; answered with ``Retry-After``
    ├── StorageError         the object store failed after retries
    └── DatabaseUnavailable  Postgres refused, timed out or dropped the connection
"""

from __future__ import annotations

#: The longest message an error answer carries: enough to name a field and its rule, never a whole
#: echoed input (a 10,000-stage chain, a rejected prompt).
MAX_MESSAGE_CHARS = 500


class ServiceError(Exception):
    """An error of this service."""

    #: More keys of the answer's JSON body besides ``error`` (bounded lists, never echoed input).
    details: dict[str, object] = {}

    def __init__(self, message: str | None = None) -> None:
        text = message or (self.__doc__ or "").strip()
        if len(text) > MAX_MESSAGE_CHARS:
            text = text[: MAX_MESSAGE_CHARS - 1] + "…"
        super().__init__(text)

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


class UnsupportedMediaType(ServiceError):
    """The request body has a media type this route does not read."""


class NotImplementedYet(ServiceError):
    """This feature is not available in this build."""


class NotFound(ServiceError):
    """Not found."""


class RequestTimeout(ServiceError):
    """The request body did not arrive in time."""


class IdempotencyConflict(ServiceError):
    """This idempotency key was already used with a different request."""


class Conflict(ServiceError):
    """The request conflicts with work still under way."""


class Unauthorized(ServiceError):
    """A valid admin token is required."""


class Forbidden(ServiceError):
    """This key may not do that."""


class TooManyRequests(ServiceError):
    """A quota is used up; the client may try again after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ServiceError):
    """A dependency is unavailable; the client should try again after ``retry_after_s``."""

    retry_after_s = 5


class StorageError(Unavailable):
    """The object store is unavailable."""


class DatabaseUnavailable(Unavailable):
    """The database is unavailable."""


HTTP_STATUS: dict[type[ServiceError], int] = {
    InvalidParams: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    RequestTimeout: 408,
    IdempotencyConflict: 409,
    Conflict: 409,
    PayloadTooLarge: 413,
    TooManyRequests: 429,
    UnsupportedMediaType: 415,
    NotImplementedYet: 501,
    Unavailable: 503,
}
