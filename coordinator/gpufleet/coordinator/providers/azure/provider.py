"""``AzureProvider``: Azure virtual machines through azure-mgmt-compute. See providers/base.py for the contract.

* launch = one ``virtual_machines.begin_create_or_update`` per instance, named deterministically from the launch
  token (``token_names``): a retried launch finds the VM by name and does not create another. Spot =
  ``priority: Spot`` with ``evictionPolicy: Delete`` and ``billingProfile.maxPrice`` (-1 = up to on-demand); tags
  are ARM tags; user-data is base64 ``customData`` (cloud-init). The NIC is created with the VM
  (``networkInterfaceConfigurations``) and deleted with it. A VM whose allocation failed is deleted before the
  typed error is raised, so nothing leaks.
* list = ``virtual_machines.list`` of the resource group, filtered by our tags. terminate = ``begin_delete``.
* ``cloud_id`` is the VM name. Blocking SDK calls (and LRO polling) run in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from gpufleet.common.errors import GpuFleetError, InstanceNotFoundError, InvalidInputError, Problem
from gpufleet.coordinator.providers.azure.client import AzureClientSettings, AzureComputeApi
from gpufleet.coordinator.providers.azure.errors import mapped
from gpufleet.coordinator.providers.base import (
    Capability,
    InstanceState,
    LaunchRequest,
    ProviderInstance,
    managed_tags,
    matches_tags,
    token_names,
)
from gpufleet.coordinator.providers.catalog import ProviderCatalog, load_builtin

T = TypeVar("T")

_STATES = {
    "Creating": InstanceState.PENDING,
    "Updating": InstanceState.PENDING,
    "Succeeded": InstanceState.RUNNING,
    "Deleting": InstanceState.STOPPING,
    "Failed": InstanceState.TERMINATED,
}


@dataclass(frozen=True, slots=True)
class AzureRegionSettings:
    subnet_id: str  # /subscriptions/.../virtualNetworks/.../subnets/...
    image: Mapping[str, str]  # imageReference: publisher/offer/sku/version, or {"id": ...}
    zones: tuple[str, ...] = ()
    admin_username: str = "gpufleet"
    ssh_public_key: str = ""
    os_disk_gb: int = 256


class AzureProvider:
    name = "azure"

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        regions: Mapping[str, AzureRegionSettings],
        client: AzureClientSettings | None = None,
        catalog: ProviderCatalog | None = None,
    ) -> None:
        if not subscription_id or not resource_group:
            raise InvalidInputError(Problem("providers.azure", "subscription_id and resource_group are required"))
        if not regions:
            raise InvalidInputError(Problem("providers.azure.regions", "configure at least one region"))
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.regions = dict(regions)
        self.client_settings = client or AzureClientSettings()
        self.catalog = catalog or load_builtin("azure")
        self._api: AzureComputeApi | None = None

    def capabilities(self) -> frozenset[Capability]:
        return frozenset(
            {Capability.SPOT, Capability.IDEMPOTENT_LAUNCH, Capability.PROVISIONS, Capability.INTERRUPTION_NOTICE,
             Capability.MAX_PRICE}
        )  # fmt: skip

    @property
    def api(self) -> AzureComputeApi:
        if self._api is None:
            self._api = AzureComputeApi(self.subscription_id, self.client_settings)
        return self._api

    async def _call(self, op: str, fn: Callable[[], T]) -> T:
        def run() -> T:
            with mapped(op):
                return fn()

        return await asyncio.to_thread(run)

    def _vm_body(self, request: LaunchRequest, name: str) -> dict[str, Any]:
        rs = self.regions[request.region]
        self.catalog.get(request.instance_type)  # unknown size -> InvalidInputError before any call
        os_profile: dict[str, Any] = {"computerName": name, "adminUsername": rs.admin_username}
        if rs.ssh_public_key:
            os_profile["linuxConfiguration"] = {
                "disablePasswordAuthentication": True,
                "ssh": {
                    "publicKeys": [
                        {"path": f"/home/{rs.admin_username}/.ssh/authorized_keys", "keyData": rs.ssh_public_key}
                    ]
                },
            }
        if request.user_data:
            os_profile["customData"] = base64.b64encode(request.user_data.encode()).decode()
        props: dict[str, Any] = {
            "hardwareProfile": {"vmSize": request.instance_type},
            "storageProfile": {
                "imageReference": dict(rs.image),
                "osDisk": {
                    "createOption": "FromImage",
                    "deleteOption": "Delete",
                    "diskSizeGB": rs.os_disk_gb,
                    "managedDisk": {"storageAccountType": "Premium_LRS"},
                },
            },
            "osProfile": os_profile,
            "networkProfile": {
                "networkApiVersion": "2022-11-01",
                "networkInterfaceConfigurations": [
                    {
                        "name": f"{name}-nic",
                        "properties": {
                            "primary": True,
                            "deleteOption": "Delete",
                            "ipConfigurations": [{"name": "ipconfig1", "properties": {"subnet": {"id": rs.subnet_id}}}],
                        },
                    }
                ],
            },
            "priority": "Spot" if request.spot else "Regular",
        }
        if request.spot:
            props["evictionPolicy"] = "Delete"
            max_price = request.max_price_micros / 1_000_000 if request.max_price_micros else -1
            props["billingProfile"] = {"maxPrice": max_price}
        body: dict[str, Any] = {"location": request.region, "tags": managed_tags(request), "properties": props}
        zone = request.zone or (rs.zones[0] if rs.zones else "")
        if zone:
            body["zones"] = [zone]
        return body

    async def launch(self, request: LaunchRequest) -> list[ProviderInstance]:
        if request.region not in self.regions:
            raise InvalidInputError(
                Problem(
                    "region",
                    f"azure region {request.region!r} is not configured; configured: {', '.join(self.regions)}",
                )
            )
        out = []
        for name in token_names(request.token, request.count):
            body = self._vm_body(request, name)
            out.append(self._to_instance(await asyncio.to_thread(self._create_one, name, body)))
        return out

    def _create_one(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        rg = self.resource_group
        try:
            with mapped("virtual_machines.get"):
                existing = self.api.get(rg, name)
            if existing.get("properties", {}).get("provisioningState") != "Failed":
                return existing  # created by an earlier try of this same launch
            with mapped("virtual_machines.delete"):
                self.api.delete(rg, name)
        except InstanceNotFoundError:
            pass
        try:
            with mapped("virtual_machines.create_or_update"):
                return self.api.create(rg, name, body)
        except GpuFleetError:
            self._cleanup_failed(name)
            raise

    def _cleanup_failed(self, name: str) -> None:
        """A VM whose allocation failed still exists (provisioningState Failed): delete it so nothing leaks."""
        try:
            with mapped("virtual_machines.delete"):
                self.api.delete(self.resource_group, name)
        except GpuFleetError:
            return  # best effort: the next list shows it as terminated and the reconciler retries

    async def list_instances(self, tags: Mapping[str, str] | None = None) -> list[ProviderInstance]:
        raw = await self._call("virtual_machines.list", lambda: self.api.list(self.resource_group))
        return [self._to_instance(r) for r in raw if matches_tags(r.get("tags") or {}, tags)]

    async def terminate(self, cloud_ids: Sequence[str]) -> None:
        for name in cloud_ids:
            await self._delete_one(name)

    async def _delete_one(self, name: str) -> None:
        try:
            await self._call("virtual_machines.delete", lambda: self.api.delete(self.resource_group, name))
        except InstanceNotFoundError:
            return  # already gone

    async def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    def _to_instance(self, raw: Mapping[str, Any]) -> ProviderInstance:
        props = raw.get("properties", {})
        created = props.get("timeCreated")
        if isinstance(created, datetime):
            launched_ms = int(created.timestamp() * 1000)
        elif isinstance(created, str) and created:
            launched_ms = int(datetime.fromisoformat(created).timestamp() * 1000)
        else:
            launched_ms = 0
        zones = raw.get("zones") or [""]
        return ProviderInstance(
            cloud_id=str(raw["name"]),
            provider=self.name,
            instance_type=str(props.get("hardwareProfile", {}).get("vmSize", "")),
            region=str(raw.get("location", "")),
            zone=str(zones[0]),
            spot=props.get("priority") == "Spot",
            state=_STATES.get(str(props.get("provisioningState", "")), InstanceState.PENDING),
            tags=dict(raw.get("tags") or {}),
            launched_ms=launched_ms,
        )
