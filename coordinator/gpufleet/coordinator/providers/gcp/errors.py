"""One table from Compute Engine errors to gpufleet errors. See providers/base.py.

Two shapes of error: an HTTP error answered to the call (``google.api_core`` exception with an HTTP status and
a reason such as ``quotaExceeded``), and an operation that finished with ``error.errors[].code`` (capacity and
quota problems usually arrive this way).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from gpufleet.common.errors import (
    GpuFleetError,
    InstanceNotFoundError,
    InsufficientCapacityError,
    InvalidInputError,
    Problem,
    ProviderUnavailableError,
    QuotaExceededError,
)
from gpufleet.coordinator.providers.gcp.client import vendor_errors

#: operation error code (or HTTP error reason) -> our error class
ERROR_CODES: dict[str, type[GpuFleetError]] = {
    "ZONE_RESOURCE_POOL_EXHAUSTED": InsufficientCapacityError,
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS": InsufficientCapacityError,
    "RESOURCE_POOL_EXHAUSTED": InsufficientCapacityError,
    "UNSUPPORTED_OPERATION": InsufficientCapacityError,
    "QUOTA_EXCEEDED": QuotaExceededError,
    "quotaExceeded": QuotaExceededError,
    "rateLimitExceeded": ProviderUnavailableError,
    "RESOURCE_NOT_FOUND": InstanceNotFoundError,
    "notFound": InstanceNotFoundError,
    "invalid": InvalidInputError,
    "badRequest": InvalidInputError,
}

#: HTTP status -> our error class, when the reason is not in ERROR_CODES
HTTP_STATUS: dict[int, type[GpuFleetError]] = {
    400: InvalidInputError,
    404: InstanceNotFoundError,
    429: ProviderUnavailableError,
    500: ProviderUnavailableError,
    502: ProviderUnavailableError,
    503: ProviderUnavailableError,
    504: ProviderUnavailableError,
}


def _build(cls: type[GpuFleetError], text: str) -> GpuFleetError:
    if cls is InvalidInputError:
        return InvalidInputError(Problem("instance_type" if "machineType" in text else "gcp", text))
    return cls(text)


def map_operation_error(codes: Sequence[str], message: str, operation: str) -> GpuFleetError:
    text = f"gcp {operation}: {', '.join(codes)}: {message}"
    for code in codes:
        cls = ERROR_CODES.get(code)
        if cls is not None:
            return _build(cls, text)
    return ProviderUnavailableError(text)


def map_error(exc: BaseException, operation: str) -> GpuFleetError:
    status = getattr(exc, "code", None)
    reasons = [str(e.get("reason", "")) for e in getattr(exc, "errors", None) or [] if isinstance(e, dict)]
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        reasons.append(reason)
    text = f"gcp {operation}: {type(exc).__name__}: {exc}"
    for r in reasons:
        cls = ERROR_CODES.get(r)
        if cls is not None:
            return _build(cls, text)
    if isinstance(status, int) and status in HTTP_STATUS:
        return _build(HTTP_STATUS[status], text)
    if status == 403 and "quota" in str(exc).lower():
        return QuotaExceededError(text)
    return ProviderUnavailableError(text)


def is_already_exists(exc: BaseException) -> bool:
    return getattr(exc, "code", None) == 409


@contextmanager
def mapped(operation: str) -> Iterator[None]:
    try:
        yield
    except vendor_errors() as e:
        raise map_error(e, operation) from e
