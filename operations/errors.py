"""Domain errors raised by operations and stores.

`app/errors.py` maps each class to one HTTP status, so operations stay free of
HTTP while every failure still reaches the caller with a clear message.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service reports to a caller."""

    code = "error"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(ServiceError):
    """The request is well-formed but its values are not acceptable (422)."""

    code = "invalid_input"


class BadRequest(ServiceError):
    """A name or path the service refuses to touch (400)."""

    code = "bad_request"


class NotFound(ServiceError):
    """A collection, image or job that does not exist (404)."""

    code = "not_found"


class Conflict(ServiceError):
    """The request disagrees with stored state, e.g. model vs collection (409)."""

    code = "conflict"


class PayloadTooLarge(ServiceError):
    """Upload bytes or pixels beyond the configured limits (413)."""

    code = "payload_too_large"


class RequestTimeout(ServiceError):
    """The request body stopped arriving for longer than BODY_READ_TIMEOUT_S (408)."""

    code = "request_timeout"


class UnsupportedMedia(ServiceError):
    """An upload that is not an image at all (415)."""

    code = "unsupported_media"


class Unauthorized(ServiceError):
    """Missing or wrong API key on a protected endpoint (401)."""

    code = "unauthorized"


class DependencyUnavailable(ServiceError):
    """Milvus or the SQL store is down or too slow (503 with Retry-After)."""

    code = "dependency_unavailable"

    def __init__(self, dependency: str, message: str, retry_after_s: int = 5) -> None:
        super().__init__(f"{dependency} unavailable: {message}", dependency=dependency)
        self.dependency = dependency
        self.retry_after_s = retry_after_s


class Overloaded(ServiceError):
    """The service is at its configured load limit: queue full, or the request
    could not start within its deadline (503 with Retry-After, at once)."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1, **details: object) -> None:
        super().__init__(message, **details)
        self.retry_after_s = retry_after_s
