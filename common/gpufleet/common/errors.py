"""The gpufleet exception tree and its one mapping to gRPC status codes.

Vendor errors (grpc, etcd, cloud SDKs, NVML) are mapped to these at the adapter edge; servicers map these
to status codes with :data:`GRPC_CODES`. Nothing catches bare ``Exception`` to hide it.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem in some input: the dotted field path, what is wrong, and what would be valid."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class GpuFleetError(Exception):
    """Base of every error gpufleet raises on purpose."""


class InvalidInputError(GpuFleetError):
    """Input that cannot be accepted; carries one :class:`Problem` per problem found."""

    def __init__(self, problems: list[Problem] | Problem | str, *, field: str = "") -> None:
        if isinstance(problems, str):
            problems = [Problem(field, problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = problems
        super().__init__("; ".join(str(p) for p in problems))


class NotFoundError(GpuFleetError):
    """A job, node, instance or other record that does not exist."""


class AlreadyExistsError(GpuFleetError):
    pass


class FailedPreconditionError(GpuFleetError):
    """The request is valid but the system is not in a state that allows it (e.g. cancel a finished job)."""


class PermissionDeniedError(GpuFleetError):
    """The caller is not allowed to do this (e.g. an agent with the wrong join token)."""


class NotLeaderError(GpuFleetError):
    """A write reached a coordinator that is not the leader. ``leader_address`` says where to go."""

    def __init__(self, leader_address: str = "", message: str = "") -> None:
        self.leader_address = leader_address
        super().__init__(message or f"not the leader; leader is at {leader_address or 'unknown'}")


class IllegalTransitionError(GpuFleetError):
    pass


class StoreError(GpuFleetError):
    pass


class RevisionConflictError(StoreError):
    """A conditional write lost a race (or the writer lost leadership): re-read and re-plan."""


class StoreUnavailableError(StoreError):
    pass


class ProviderError(GpuFleetError):
    """A cloud provider call failed."""


class InsufficientCapacityError(ProviderError):
    pass


class QuotaExceededError(ProviderError):
    pass


class InstanceNotFoundError(ProviderError):
    pass


class ProviderUnavailableError(ProviderError):
    pass


class BackendError(GpuFleetError):
    """A GPU backend (NVML or simulated) failed."""


class DeviceLostError(BackendError):
    pass


class UnsupportedOperationError(BackendError):
    """E.g. MIG on a GPU that is not MIG-capable."""


class UnavailableError(GpuFleetError):
    """A remote service could not be reached."""


GRPC_CODES: dict[type[GpuFleetError], grpc.StatusCode] = {
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    NotLeaderError: grpc.StatusCode.FAILED_PRECONDITION,
    IllegalTransitionError: grpc.StatusCode.FAILED_PRECONDITION,
    RevisionConflictError: grpc.StatusCode.ABORTED,
    StoreUnavailableError: grpc.StatusCode.UNAVAILABLE,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    UnsupportedOperationError: grpc.StatusCode.FAILED_PRECONDITION,
}

#: trailing-metadata key a follower sets on NotLeaderError so clients can follow it
LEADER_METADATA_KEY = "gpufleet-leader"


def grpc_code_for(error: GpuFleetError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = GRPC_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL
