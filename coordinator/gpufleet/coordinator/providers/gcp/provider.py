"""``GcpProvider``: Compute Engine through google-cloud-compute (REST). See providers/base.py for the contract.

* launch = one ``instances.insert`` per instance, named deterministically from the launch token
  (``token_names``) with a ``requestId`` derived from the token too: a retried launch either hits the same
  request id or gets 409 for the existing name, and never creates a duplicate. Guest accelerators come from the
  catalog entry's ``accelerator_type``; spot = ``scheduling.provisioningModel = SPOT`` with
  ``instanceTerminationAction = DELETE``; tags become labels; user-data goes in metadata (``user-data`` for a
  cloud-config document, ``startup-script`` for a shell script).
* list = ``instances.list`` per configured zone with a label filter. terminate = ``instances.delete``.
* ``cloud_id`` is ``<zone>/<name>``. Blocking SDK calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from gpufleet.common.errors import InstanceNotFoundError, InvalidInputError, Problem
from gpufleet.coordinator.providers.base import (
    TAG_MANAGED,
    TAG_TOKEN,
    Capability,
    InstanceState,
    LaunchRequest,
    ProviderInstance,
    _label_safe,
    managed_tags,
    token_names,
)
from gpufleet.coordinator.providers.catalog import ProviderCatalog, load_builtin
from gpufleet.coordinator.providers.gcp.client import GceApi, GcpClientSettings, vendor_errors
from gpufleet.coordinator.providers.gcp.errors import is_already_exists, map_error, map_operation_error, mapped

T = TypeVar("T")

_STATES = {
    "PROVISIONING": InstanceState.PENDING,
    "STAGING": InstanceState.PENDING,
    "RUNNING": InstanceState.RUNNING,
    "REPAIRING": InstanceState.RUNNING,
    "STOPPING": InstanceState.STOPPING,
    "SUSPENDING": InstanceState.STOPPING,
    "SUSPENDED": InstanceState.STOPPING,
    "STOPPED": InstanceState.STOPPING,
    "TERMINATED": InstanceState.TERMINATED,
}

_REQUEST_NS = uuid.UUID("6f1c7a4e-2d0b-4c51-9a59-7a4f0e5b2c10")


@dataclass(frozen=True, slots=True)
class GcpRegionSettings:
    zones: tuple[str, ...]
    image: str = (
        "projects/ubuntu-os-accelerator-images/global/images/family/ubuntu-accelerator-2204-amd64-with-nvidia-550"
    )
    network: str = "global/networks/default"
    subnetwork: str = ""
    service_account: str = ""
    disk_size_gb: int = 200
    extra_labels: Mapping[str, str] = field(default_factory=dict)


class GcpProvider:
    name = "gcp"

    def __init__(
        self,
        project: str,
        regions: Mapping[str, GcpRegionSettings],
        client: GcpClientSettings | None = None,
        catalog: ProviderCatalog | None = None,
    ) -> None:
        if not project:
            raise InvalidInputError(Problem("providers.gcp.project", "required (the GCP project id)"))
        if not regions:
            raise InvalidInputError(Problem("providers.gcp.regions", "configure at least one region with zones"))
        self.project = project
        self.regions = dict(regions)
        self.client_settings = client or GcpClientSettings()
        self.catalog = catalog or load_builtin("gcp")
        self._api: GceApi | None = None

    def capabilities(self) -> frozenset[Capability]:
        return frozenset(
            {Capability.SPOT, Capability.IDEMPOTENT_LAUNCH, Capability.PROVISIONS, Capability.INTERRUPTION_NOTICE}
        )

    @property
    def api(self) -> GceApi:
        if self._api is None:
            self._api = GceApi(self.client_settings)
        return self._api

    async def _call(self, op: str, fn: Callable[[], T]) -> T:
        def run() -> T:
            with mapped(op):
                return fn()

        return await asyncio.to_thread(run)

    def _instance_body(self, request: LaunchRequest, name: str, zone: str) -> dict[str, Any]:
        itype = self.catalog.get(request.instance_type)
        rs = self.regions[request.region]
        machine_type = itype.extra.get("machine_type", itype.name)
        labels = {k: _label_safe(v) for k, v in {**rs.extra_labels, **managed_tags(request)}.items()}
        nic: dict[str, Any] = {"network": rs.network}
        if rs.subnetwork:
            nic["subnetwork"] = rs.subnetwork
        body: dict[str, Any] = {
            "name": name,
            "machine_type": f"zones/{zone}/machineTypes/{machine_type}",
            "labels": labels,
            "disks": [
                {
                    "boot": True,
                    "auto_delete": True,
                    "initialize_params": {"source_image": rs.image, "disk_size_gb": rs.disk_size_gb},
                }
            ],
            "network_interfaces": [nic],
            "scheduling": {
                "provisioning_model": "SPOT" if request.spot else "STANDARD",
                "on_host_maintenance": "TERMINATE",  # required with GPUs
                "automatic_restart": not request.spot,
            },
        }
        if request.spot:
            body["scheduling"]["instance_termination_action"] = "DELETE"
        if "accelerator_type" in itype.extra:
            body["guest_accelerators"] = [
                {
                    "accelerator_type": f"zones/{zone}/acceleratorTypes/{itype.extra['accelerator_type']}",
                    "accelerator_count": itype.gpu_count,
                }
            ]
        if request.user_data:
            key = "startup-script" if request.user_data.startswith("#!") else "user-data"
            body["metadata"] = {"items": [{"key": key, "value": request.user_data}]}
        if rs.service_account:
            body["service_accounts"] = [
                {"email": rs.service_account, "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
            ]
        return body

    async def launch(self, request: LaunchRequest) -> list[ProviderInstance]:
        if request.region not in self.regions:
            raise InvalidInputError(
                Problem(
                    "region", f"gcp region {request.region!r} is not configured; configured: {', '.join(self.regions)}"
                )
            )
        zone = request.zone or self.regions[request.region].zones[0]
        names = token_names(request.token, request.count)
        for name in names:
            body = self._instance_body(request, name, zone)
            request_id = str(uuid.uuid5(_REQUEST_NS, f"{request.token}/{name}"))
            await asyncio.to_thread(self._insert_one, zone, body, request_id)
        token = managed_tags(request)[TAG_TOKEN]
        found = [i for i in await self._list_zone(zone, {TAG_TOKEN: token}) if i.tags.get(TAG_TOKEN) == token]
        return [i for i in found if i.cloud_id.split("/", 1)[1] in names]

    def _insert_one(self, zone: str, body: dict[str, Any], request_id: str) -> None:
        try:
            result = self.api.insert(self.project, zone, body, request_id)
        except vendor_errors() as e:
            if is_already_exists(e):
                return  # created by an earlier try of this same launch
            raise map_error(e, "instances.insert") from e
        if result.error_codes:
            raise map_operation_error(result.error_codes, result.error_message, "instances.insert")

    async def list_instances(self, tags: Mapping[str, str] | None = None) -> list[ProviderInstance]:
        out: list[ProviderInstance] = []
        for rs in self.regions.values():
            for zone in rs.zones:
                out.extend(await self._list_zone(zone, tags or {}))
        return out

    async def _list_zone(self, zone: str, tags: Mapping[str, str]) -> list[ProviderInstance]:
        wanted = {TAG_MANAGED: "true", **{k: _label_safe(v) for k, v in tags.items()}}
        label_filter = " AND ".join(f'labels.{k} = "{v}"' for k, v in wanted.items())
        raw = await self._call("instances.list", lambda: self.api.list(self.project, zone, label_filter))
        out = []
        for r in raw:
            labels = dict(r.get("labels", {}))
            if all(labels.get(k) == v for k, v in wanted.items()):  # also filter here: the filter is advisory
                out.append(self._to_instance(r, zone))
        return out

    async def terminate(self, cloud_ids: Sequence[str]) -> None:
        for cid in cloud_ids:
            zone, _, name = cid.partition("/")
            if not name:
                raise InvalidInputError(Problem("cloud_id", f"gcp instance ids are <zone>/<name>, got {cid!r}"))
            await self._delete_one(zone, name, str(uuid.uuid5(_REQUEST_NS, f"delete/{cid}")))

    async def _delete_one(self, zone: str, name: str, request_id: str) -> None:
        try:
            result = await self._call("instances.delete", lambda: self.api.delete(self.project, zone, name, request_id))
        except InstanceNotFoundError:
            return  # already gone
        if result.error_codes and "RESOURCE_NOT_FOUND" not in result.error_codes:
            raise map_operation_error(result.error_codes, result.error_message, "instances.delete")

    async def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    def _to_instance(self, raw: Mapping[str, Any], zone: str) -> ProviderInstance:
        labels = dict(raw.get("labels", {}))
        machine = str(raw.get("machine_type", "")).rsplit("/", 1)[-1]
        itype = next(
            (t.name for t in self.catalog.types.values() if t.extra.get("machine_type", t.name) == machine), machine
        )
        region = next((r for r, s in self.regions.items() if zone in s.zones), zone.rsplit("-", 1)[0])
        created = raw.get("creation_timestamp", "")
        launched_ms = int(datetime.fromisoformat(created).timestamp() * 1000) if created else 0
        nics = raw.get("network_interfaces", [])
        return ProviderInstance(
            cloud_id=f"{zone}/{raw['name']}",
            provider=self.name,
            instance_type=itype,
            region=region,
            zone=zone,
            spot=raw.get("scheduling", {}).get("provisioning_model") == "SPOT",
            state=_STATES.get(str(raw.get("status", "")), InstanceState.PENDING),
            tags=labels,
            launched_ms=launched_ms,
            private_ip=str(nics[0].get("network_i_p", nics[0].get("network_ip", ""))) if nics else "",
        )
