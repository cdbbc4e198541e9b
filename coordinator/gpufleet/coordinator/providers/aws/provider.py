"""``AwsProvider``: EC2 through boto3. See providers/base.py for the contract.

* launch = ``RunInstances`` with ``ClientToken`` (EC2's idempotency) for ``count`` instances of one type; spot
  through ``InstanceMarketOptions`` (one-time, terminate on interruption, optional ``MaxPrice``); tags on the
  instance and its volumes; user-data (boto3 base64-encodes it). Before calling, instances already tagged with
  the token are looked up, so a retry after a lost response returns the first launch's instances even where
  ``ClientToken`` is not honoured (moto).
* list = ``DescribeInstances`` filtered by our tags, paginated. terminate = ``TerminateInstances``.
Blocking SDK calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gpufleet.common.errors import InstanceNotFoundError, InvalidInputError, Problem
from gpufleet.coordinator.providers.aws.client import AwsClientSettings, ec2_client
from gpufleet.coordinator.providers.aws.errors import mapped
from gpufleet.coordinator.providers.base import (
    TAG_MANAGED,
    TAG_TOKEN,
    Capability,
    InstanceState,
    LaunchRequest,
    ProviderInstance,
    managed_tags,
)

T = TypeVar("T")

_STATES = {
    "pending": InstanceState.PENDING,
    "running": InstanceState.RUNNING,
    "shutting-down": InstanceState.STOPPING,
    "stopping": InstanceState.STOPPING,
    "stopped": InstanceState.STOPPING,
    "terminated": InstanceState.TERMINATED,
}


@dataclass(frozen=True, slots=True)
class AwsRegionSettings:
    image_id: str  # the AMI with a GPU driver (the agent is installed by cloud-init)
    subnet_ids: Mapping[str, str] = field(default_factory=dict)  # zone -> subnet
    security_group_ids: tuple[str, ...] = ()
    iam_instance_profile: str = ""
    key_name: str = ""


class AwsProvider:
    name = "aws"

    def __init__(self, regions: Mapping[str, AwsRegionSettings], client: AwsClientSettings | None = None) -> None:
        if not regions:
            raise InvalidInputError(Problem("providers.aws.regions", "configure at least one region with an image_id"))
        self.regions = dict(regions)
        self.client_settings = client or AwsClientSettings()
        self._clients: dict[str, Any] = {}

    def capabilities(self) -> frozenset[Capability]:
        return frozenset(
            {Capability.SPOT, Capability.IDEMPOTENT_LAUNCH, Capability.PROVISIONS, Capability.INTERRUPTION_NOTICE,
             Capability.MAX_PRICE}
        )  # fmt: skip

    def client(self, region: str) -> Any:
        if region not in self.regions:
            raise InvalidInputError(
                Problem("region", f"aws region {region!r} is not configured; configured: {', '.join(self.regions)}")
            )
        if region not in self._clients:
            self._clients[region] = ec2_client(region, self.client_settings)
        return self._clients[region]

    async def _call(self, op: str, fn: Callable[[], T]) -> T:
        def run() -> T:
            with mapped(op):
                return fn()

        return await asyncio.to_thread(run)

    async def launch(self, request: LaunchRequest) -> list[ProviderInstance]:
        ec2 = self.client(request.region)
        existing = await self._describe(request.region, {TAG_TOKEN: managed_tags(request)[TAG_TOKEN]})
        live = [i for i in existing if i.state != InstanceState.TERMINATED]
        if live:
            return live
        rs = self.regions[request.region]
        tags = [{"Key": k, "Value": v} for k, v in managed_tags(request).items()]
        params: dict[str, Any] = {
            "ImageId": rs.image_id,
            "InstanceType": request.instance_type,
            "MinCount": request.count,
            "MaxCount": request.count,
            "ClientToken": request.token[:64],
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
        }
        if request.user_data:
            params["UserData"] = request.user_data
        if request.zone:
            params["Placement"] = {"AvailabilityZone": request.zone}
            if request.zone in rs.subnet_ids:
                params["SubnetId"] = rs.subnet_ids[request.zone]
        if rs.security_group_ids:
            params["SecurityGroupIds"] = list(rs.security_group_ids)
        if rs.iam_instance_profile:
            params["IamInstanceProfile"] = {"Name": rs.iam_instance_profile}
        if rs.key_name:
            params["KeyName"] = rs.key_name
        if request.spot:
            spot: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
            if request.max_price_micros:
                spot["MaxPrice"] = f"{request.max_price_micros / 1_000_000:.6f}"
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
        reply = await self._call("RunInstances", lambda: ec2.run_instances(**params))
        return [self._to_instance(i, request.region) for i in reply["Instances"]]

    async def list_instances(self, tags: Mapping[str, str] | None = None) -> list[ProviderInstance]:
        out: list[ProviderInstance] = []
        for region in self.regions:
            out.extend(await self._describe(region, tags or {}))
        return out

    async def _describe(self, region: str, tags: Mapping[str, str]) -> list[ProviderInstance]:
        ec2 = self.client(region)
        filters = [{"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}]
        filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]

        def run() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page["Reservations"]:
                    found.extend(reservation["Instances"])
            return found

        return [self._to_instance(i, region) for i in await self._call("DescribeInstances", run)]

    async def terminate(self, cloud_ids: Sequence[str]) -> None:
        by_region: dict[str, list[str]] = {}
        for inst in await self.list_instances():
            if inst.cloud_id in cloud_ids:
                by_region.setdefault(inst.region, []).append(inst.cloud_id)
        for region, ids in by_region.items():
            ec2 = self.client(region)
            for cid in ids:  # one by one: a not-found id must not fail the others
                await self._terminate_one(ec2, cid)

    async def _terminate_one(self, ec2: Any, cloud_id: str) -> None:
        try:
            await self._call("TerminateInstances", lambda: ec2.terminate_instances(InstanceIds=[cloud_id]))
        except InstanceNotFoundError:
            return

    async def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def _to_instance(self, raw: Mapping[str, Any], region: str) -> ProviderInstance:
        tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
        launched = raw.get("LaunchTime")
        return ProviderInstance(
            cloud_id=raw["InstanceId"],
            provider=self.name,
            instance_type=raw["InstanceType"],
            region=region,
            zone=raw.get("Placement", {}).get("AvailabilityZone", ""),
            spot=raw.get("InstanceLifecycle") == "spot",
            state=_STATES.get(raw.get("State", {}).get("Name", ""), InstanceState.PENDING),
            tags=tags,
            launched_ms=int(launched.timestamp() * 1000) if launched is not None else 0,
            private_ip=raw.get("PrivateIpAddress", ""),
        )
