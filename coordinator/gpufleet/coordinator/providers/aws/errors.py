"""One table from EC2 error codes to gpufleet errors (httpx-style ``map_exceptions``). See providers/base.py."""

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
from gpufleet.coordinator.providers.aws.client import vendor_errors

#: EC2 API error code -> our error class (codes from the EC2 API reference "Error codes")
ERROR_CODES: dict[str, type[GpuFleetError]] = {
    "InsufficientInstanceCapacity": InsufficientCapacityError,
    "InsufficientHostCapacity": InsufficientCapacityError,
    "InsufficientReservedInstanceCapacity": InsufficientCapacityError,
    "InsufficientCapacity": InsufficientCapacityError,
    "SpotMaxPriceTooLow": InsufficientCapacityError,
    "Unsupported": InsufficientCapacityError,  # type not offered in that zone
    "InstanceLimitExceeded": QuotaExceededError,
    "VcpuLimitExceeded": QuotaExceededError,
    "MaxSpotInstanceCountExceeded": QuotaExceededError,
    "InvalidInstanceID.NotFound": InstanceNotFoundError,
    "InvalidInstanceID.Malformed": InstanceNotFoundError,
    "InvalidInstanceType": InvalidInputError,
    "InvalidInstanceType.NotFound": InvalidInputError,
    "InvalidAMIID.NotFound": InvalidInputError,
    "InvalidAMIID.Malformed": InvalidInputError,
    "InvalidParameterValue": InvalidInputError,
    "InvalidParameterCombination": InvalidInputError,
    "RequestLimitExceeded": ProviderUnavailableError,
    "Throttling": ProviderUnavailableError,
    "InternalError": ProviderUnavailableError,
    "ServiceUnavailable": ProviderUnavailableError,
    "Unavailable": ProviderUnavailableError,
}


def map_error(exc: BaseException, operation: str) -> GpuFleetError:
    response = getattr(exc, "response", None)
    code = ""
    message = str(exc)
    if isinstance(response, dict):
        err = response.get("Error", {})
        code = str(err.get("Code", ""))
        message = str(err.get("Message", message))
    cls = ERROR_CODES.get(code)
    text = f"aws {operation}: {code or type(exc).__name__}: {message}"
    if cls is InvalidInputError:
        return InvalidInputError(Problem("instance_type" if "InstanceType" in code else "aws", text))
    if cls is not None:
        return cls(text)
    # connection errors, timeouts, unknown codes: transient from our side
    return ProviderUnavailableError(text)


@contextmanager
def mapped(operation: str) -> Iterator[None]:
    try:
        yield
    except vendor_errors() as e:
        raise map_error(e, operation) from e
