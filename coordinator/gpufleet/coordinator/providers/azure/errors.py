"""One table from Azure Resource Manager error codes to gpufleet errors. See providers/base.py."""

from __future__ import annotations

from collections.abc import Iterator
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
from gpufleet.coordinator.providers.azure.client import vendor_errors

#: ARM error code -> our error class (Azure "Troubleshoot allocation failures" and "Resolve quota errors")
ERROR_CODES: dict[str, type[GpuFleetError]] = {
    "AllocationFailed": InsufficientCapacityError,
    "ZonalAllocationFailed": InsufficientCapacityError,
    "OverconstrainedAllocationRequest": InsufficientCapacityError,
    "OverconstrainedZonalAllocationRequest": InsufficientCapacityError,
    "SkuNotAvailable": InsufficientCapacityError,
    "SpotPriceBelowCurrentPrice": InsufficientCapacityError,
    "QuotaExceeded": QuotaExceededError,
    "OperationNotAllowed": QuotaExceededError,  # "... results in exceeding approved ... quota"
    "ResourceNotFound": InstanceNotFoundError,
    "NotFound": InstanceNotFoundError,
    "InvalidParameter": InvalidInputError,
    "BadRequest": InvalidInputError,
    "TooManyRequests": ProviderUnavailableError,
    "InternalServerError": ProviderUnavailableError,
    "ServiceUnavailable": ProviderUnavailableError,
}


def map_error(exc: BaseException, operation: str) -> GpuFleetError:
    err = getattr(exc, "error", None)
    code = str(getattr(err, "code", "") or "")
    status = getattr(exc, "status_code", None)
    text = f"azure {operation}: {code or type(exc).__name__}: {getattr(err, 'message', None) or exc}"
    cls = ERROR_CODES.get(code)
    if code == "OperationNotAllowed" and "quota" not in text.lower():
        cls = InvalidInputError  # not a quota problem: our request is not allowed as made
    if cls is None and status == 404:
        cls = InstanceNotFoundError
    if cls is InvalidInputError:
        return InvalidInputError(Problem("instance_type" if "size" in text.lower() else "azure", text))
    if cls is not None:
        return cls(text)
    return ProviderUnavailableError(text)


@contextmanager
def mapped(operation: str) -> Iterator[None]:
    try:
        yield
    except vendor_errors() as e:
        raise map_error(e, operation) from e
