"""The only module that imports google-cloud-compute (lazily, inside functions). See providers/base.py.

``GceApi`` wraps the REST clients with plain dicts in and out (snake_case field names), so the rest of the
package never touches SDK types. Operations are waited on through a ``ZoneOperationsClient`` built with the
same endpoint and credentials: ``ExtendedOperation.result()`` would poll through an internal client that
ignores an endpoint override. ``api_endpoint`` (``http://127.0.0.1:PORT`` in tests) and ``anonymous``
credentials keep tests on loopback; in production credentials come from the environment's ADC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class GcpClientSettings:
    api_endpoint: str | None = None
    anonymous: bool = False  # tests: google.auth AnonymousCredentials
    timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class OperationResult:
    name: str
    error_codes: tuple[str, ...]
    error_message: str
    http_status: int


class GceApi:
    def __init__(self, settings: GcpClientSettings) -> None:
        from google.cloud import compute_v1

        kwargs: dict[str, Any] = {"transport": "rest"}
        if settings.api_endpoint:
            kwargs["client_options"] = {"api_endpoint": settings.api_endpoint}
        if settings.anonymous:
            from google.auth.credentials import AnonymousCredentials

            kwargs["credentials"] = AnonymousCredentials()  # type: ignore[no-untyped-call]
        self._compute = compute_v1
        self.settings = settings
        self.instances = compute_v1.InstancesClient(**kwargs)
        self.operations = compute_v1.ZoneOperationsClient(**kwargs)

    def insert(self, project: str, zone: str, instance: dict[str, Any], request_id: str) -> OperationResult:
        resource = self._compute.Instance(instance)
        op = self.instances.insert_unary(
            request=self._compute.InsertInstanceRequest(
                project=project, zone=zone, instance_resource=resource, request_id=request_id
            ),
            timeout=self.settings.timeout_s,
        )
        return self.wait(project, zone, op)

    def delete(self, project: str, zone: str, name: str, request_id: str) -> OperationResult:
        op = self.instances.delete_unary(
            request=self._compute.DeleteInstanceRequest(
                project=project, zone=zone, instance=name, request_id=request_id
            ),
            timeout=self.settings.timeout_s,
        )
        return self.wait(project, zone, op)

    def wait(self, project: str, zone: str, op: Any, deadline_s: float = 600.0) -> OperationResult:
        end = time.monotonic() + deadline_s
        while op.status != self._compute.Operation.Status.DONE and time.monotonic() < end:
            op = self.operations.wait(project=project, zone=zone, operation=op.name, timeout=self.settings.timeout_s)
        errors = tuple(e.code for e in op.error.errors) if op.error else ()
        message = "; ".join(e.message for e in op.error.errors) if op.error else ""
        return OperationResult(op.name, errors, message, int(op.http_error_status_code or 0))

    def list(self, project: str, zone: str, label_filter: str) -> list[dict[str, Any]]:
        pager = self.instances.list(
            request=self._compute.ListInstancesRequest(project=project, zone=zone, filter=label_filter),
            timeout=self.settings.timeout_s,
        )
        return [self._compute.Instance.to_dict(i) for i in pager]

    def close(self) -> None:
        self.instances.transport.close()  # type: ignore[no-untyped-call]
        self.operations.transport.close()  # type: ignore[no-untyped-call]


def vendor_errors() -> tuple[type[BaseException], ...]:
    """SDK and transport exception bases, for errors.py to catch without importing the SDK itself."""
    import requests
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError

    return (GoogleAPIError, GoogleAuthError, requests.RequestException)
