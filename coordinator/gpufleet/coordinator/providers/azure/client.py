"""The only module that imports azure-core / azure-mgmt-compute (lazily, inside functions). See providers/base.py.

``AzureComputeApi`` takes and returns REST-shaped dicts (camelCase, as the ARM API documents them), so the rest of
the package never touches SDK types. Long-running operations are waited on with the SDK's poller, which follows
the ``Azure-AsyncOperation`` URL the service answered (the loopback fake in tests). ``base_url`` and an explicit
``credential`` keep tests on loopback; ``allow_http`` relaxes azure-core's rule that bearer tokens only travel over
https (tests only), by setting the per-request ``enforce_https=False`` option in a custom authentication policy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast


@dataclass(frozen=True, slots=True)
class AzureClientSettings:
    base_url: str | None = None
    credential: Any = None  # an azure-core TokenCredential; None: DefaultAzureCredential (azure-identity)
    allow_http: bool = False  # tests: loopback fake over plain http
    polling_interval_s: float = 15.0


class AzureComputeApi:
    def __init__(self, subscription_id: str, settings: AzureClientSettings) -> None:
        from azure.mgmt.compute import ComputeManagementClient

        credential = settings.credential
        if credential is None:  # production only; never reached by tests
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        kwargs: dict[str, Any] = {"polling_interval": settings.polling_interval_s}
        if settings.base_url:
            kwargs["base_url"] = settings.base_url
        if settings.allow_http:
            kwargs["authentication_policy"] = _http_allowed_policy(credential)
        self.client = ComputeManagementClient(credential, subscription_id, **kwargs)

    def get(self, resource_group: str, name: str) -> dict[str, Any]:
        return dict(self.client.virtual_machines.get(resource_group, name).as_dict())

    def create(self, resource_group: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        poller = self.client.virtual_machines.begin_create_or_update(resource_group, name, cast(Any, body))
        return dict(poller.result().as_dict())

    def delete(self, resource_group: str, name: str) -> None:
        self.client.virtual_machines.begin_delete(resource_group, name).result()

    def list(self, resource_group: str) -> Iterable[dict[str, Any]]:
        return [dict(vm.as_dict()) for vm in self.client.virtual_machines.list(resource_group)]

    def close(self) -> None:
        self.client.close()


def _http_allowed_policy(credential: Any) -> Any:
    from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy

    class HttpAllowedAuthenticationPolicy(ARMChallengeAuthenticationPolicy):
        def on_request(self, request: Any) -> None:
            request.context.options["enforce_https"] = False
            super().on_request(request)

    return HttpAllowedAuthenticationPolicy(credential, "https://management.azure.com/.default")


def vendor_errors() -> tuple[type[BaseException], ...]:
    from azure.core.exceptions import AzureError

    return (AzureError,)
