"""One conformance suite for every ``CloudProvider`` (providers/base.py): fake, aws (boto3 on a moto server),
gcp (google-cloud-compute REST on a loopback fake), azure (azure-mgmt-compute on a loopback fake).

Each harness says how to make its cloud answer a capacity or quota error on the next launch; the tests are the
same for all. Only 127.0.0.1 is ever reached.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import pytest

from gpufleet.common.errors import InsufficientCapacityError, InvalidInputError, QuotaExceededError
from gpufleet.coordinator.providers.base import (
    TAG_MANAGED,
    TAG_POOL,
    Capability,
    CloudProvider,
    InstanceState,
    LaunchRequest,
)
from tests.fakes import aws as aws_fake  # sets MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION before moto loads
from tests.fakes.azure_compute import FakeAzureCompute
from tests.fakes.gce import FakeGce

ErrorKind = Literal["capacity", "quota"]


@dataclass
class Harness:
    provider: CloudProvider
    region: str
    instance_type: str
    unknown_type: str
    inject: Callable[[ErrorKind], None]


# ---------------------------------------------------------------- harness builders


def _fake_harness() -> Harness:
    from gpufleet.common.errors import InsufficientCapacityError as Cap
    from gpufleet.common.errors import QuotaExceededError as Quota
    from gpufleet.coordinator.providers.fake import FakeProvider

    p = FakeProvider()

    def inject(kind: ErrorKind) -> None:
        p.fail_next(Cap("injected capacity") if kind == "capacity" else Quota("injected quota"))

    return Harness(p, "local-a", "sim-l4x1", "sim-nonexistent", inject)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with aws_fake.moto_server() as url:
        yield url


def _aws_harness(endpoint: str) -> Harness:
    from gpufleet.coordinator.providers.aws import AwsClientSettings, AwsProvider, AwsRegionSettings

    p = AwsProvider(
        {"us-east-1": AwsRegionSettings(image_id="ami-12c6146b")},
        AwsClientSettings(endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing"),
    )

    def inject(kind: ErrorKind) -> None:
        code = "InsufficientInstanceCapacity" if kind == "capacity" else "InstanceLimitExceeded"
        aws_fake.inject_error(p.client("us-east-1"), code, status=500 if kind == "capacity" else 400)

    return Harness(p, "us-east-1", "g6.xlarge", "g99.superlarge", inject)


@pytest.fixture(scope="module")
def gce() -> Iterator[FakeGce]:
    from gpufleet.coordinator.providers.catalog import load_builtin

    machine_types = {t.extra.get("machine_type", t.name) for t in load_builtin("gcp").types.values()}
    server = FakeGce(machine_types - {"g2-standard-96"})  # listed in our catalog, unknown to this "cloud"
    server.http.start()
    try:
        yield server
    finally:
        server.http.stop()


def _gcp_harness(gce: FakeGce) -> Harness:
    from gpufleet.coordinator.providers.gcp import GcpClientSettings, GcpProvider, GcpRegionSettings

    p = GcpProvider(
        "test-project",
        {"us-central1": GcpRegionSettings(zones=("us-central1-a",))},
        GcpClientSettings(api_endpoint=gce.http.url, anonymous=True),
    )

    def inject(kind: ErrorKind) -> None:
        gce.fail_next_insert("ZONE_RESOURCE_POOL_EXHAUSTED" if kind == "capacity" else "QUOTA_EXCEEDED")

    return Harness(p, "us-central1", "g2-standard-4", "g9-imaginary-4", inject)


class StaticToken:
    """A dummy azure-core TokenCredential (never DefaultAzureCredential in tests)."""

    def get_token(self, *scopes: str, **kwargs: object) -> object:
        from azure.core.credentials import AccessToken

        return AccessToken("fake-token", 4_102_444_800)


@pytest.fixture(scope="module")
def arm() -> Iterator[FakeAzureCompute]:
    from gpufleet.coordinator.providers.catalog import load_builtin

    server = FakeAzureCompute(set(load_builtin("azure").types) - {"Standard_NC64as_T4_v3"})  # as for GCE
    server.http.start()
    try:
        yield server
    finally:
        server.http.stop()


def _azure_harness(arm: FakeAzureCompute) -> Harness:
    from gpufleet.coordinator.providers.azure import AzureClientSettings, AzureProvider, AzureRegionSettings

    p = AzureProvider(
        "00000000-0000-0000-0000-000000000000",
        "gpufleet-test",
        {"eastus": AzureRegionSettings(subnet_id="/subscriptions/x/subnets/default", image={"publisher": "Canonical"})},
        AzureClientSettings(base_url=arm.http.url, credential=StaticToken(), allow_http=True, polling_interval_s=0),
    )

    def inject(kind: ErrorKind) -> None:
        if kind == "capacity":
            arm.fail_next_create("AllocationFailed")
        else:
            arm.reject_next_create(
                409, "OperationNotAllowed", "Operation results in exceeding approved NCASv3_T4 Cores quota"
            )

    return Harness(p, "eastus", "Standard_NC4as_T4_v3", "Standard_ND9000_imaginary", inject)


PROVIDERS = ["fake", "aws", "gcp", "azure"]


@pytest.fixture(params=PROVIDERS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    kind = request.param
    if kind == "fake":
        h = _fake_harness()
    elif kind == "aws":
        h = _aws_harness(request.getfixturevalue("moto_endpoint"))
    elif kind == "gcp":
        h = _gcp_harness(request.getfixturevalue("gce"))
    elif kind == "azure":
        h = _azure_harness(request.getfixturevalue("arm"))
    else:
        raise AssertionError(kind)
    try:
        yield h
    finally:
        await h.provider.close()


def _req(h: Harness, *, pool: str, count: int = 1, spot: bool = False, token: str | None = None) -> LaunchRequest:
    return LaunchRequest(
        instance_type=h.instance_type,
        region=h.region,
        token=token or uuid.uuid4().hex,
        count=count,
        spot=spot,
        user_data="#cloud-config\nruncmd: [echo hello]\n",
        tags={TAG_POOL: pool},
    )


# ---------------------------------------------------------------- the suite


async def test_launch_on_demand_is_listed_with_our_tags(harness: Harness) -> None:
    pool = "p" + uuid.uuid4().hex[:8]
    launched = await harness.provider.launch(_req(harness, pool=pool, count=2))
    assert len(launched) == 2
    listed = await harness.provider.list_instances({TAG_POOL: pool})
    assert {i.cloud_id for i in listed} == {i.cloud_id for i in launched}
    for inst in listed:
        assert inst.instance_type == harness.instance_type
        assert inst.region == harness.region
        assert not inst.spot
        assert inst.tags[TAG_MANAGED] == "true" and inst.tags[TAG_POOL] == pool
        assert inst.state in (InstanceState.PENDING, InstanceState.RUNNING)


async def test_launch_spot(harness: Harness) -> None:
    assert Capability.SPOT in harness.provider.capabilities()
    pool = "p" + uuid.uuid4().hex[:8]
    await harness.provider.launch(_req(harness, pool=pool, spot=True))
    (inst,) = await harness.provider.list_instances({TAG_POOL: pool})
    assert inst.spot


async def test_relaunch_with_same_token_creates_no_duplicate(harness: Harness) -> None:
    pool = "p" + uuid.uuid4().hex[:8]
    token = uuid.uuid4().hex
    first = await harness.provider.launch(_req(harness, pool=pool, count=2, token=token))
    second = await harness.provider.launch(_req(harness, pool=pool, count=2, token=token))
    assert {i.cloud_id for i in second} == {i.cloud_id for i in first}
    assert len(await harness.provider.list_instances({TAG_POOL: pool})) == 2


async def test_list_filters_by_tags(harness: Harness) -> None:
    a, b = "a" + uuid.uuid4().hex[:8], "b" + uuid.uuid4().hex[:8]
    (ia,) = await harness.provider.launch(_req(harness, pool=a))
    (ib,) = await harness.provider.launch(_req(harness, pool=b))
    assert [i.cloud_id for i in await harness.provider.list_instances({TAG_POOL: a})] == [ia.cloud_id]
    assert [i.cloud_id for i in await harness.provider.list_instances({TAG_POOL: b})] == [ib.cloud_id]
    every = {i.cloud_id for i in await harness.provider.list_instances()}
    assert {ia.cloud_id, ib.cloud_id} <= every


async def test_terminate_is_idempotent(harness: Harness) -> None:
    pool = "p" + uuid.uuid4().hex[:8]
    (keep, gone) = await harness.provider.launch(_req(harness, pool=pool, count=2))
    await harness.provider.terminate([gone.cloud_id])
    await harness.provider.terminate([gone.cloud_id])  # already gone: no error
    live = [i for i in await harness.provider.list_instances({TAG_POOL: pool}) if i.state != InstanceState.TERMINATED]
    assert [i.cloud_id for i in live] == [keep.cloud_id]


async def test_capacity_error_is_typed(harness: Harness) -> None:
    harness.inject("capacity")
    with pytest.raises(InsufficientCapacityError):
        await harness.provider.launch(_req(harness, pool="cap"))


async def test_quota_error_is_typed(harness: Harness) -> None:
    harness.inject("quota")
    with pytest.raises(QuotaExceededError):
        await harness.provider.launch(_req(harness, pool="quota"))


async def test_unknown_instance_type_is_invalid_input(harness: Harness) -> None:
    req = _req(harness, pool="bad")
    bad = LaunchRequest(instance_type=harness.unknown_type, region=req.region, token=req.token, tags=req.tags)
    with pytest.raises(InvalidInputError):
        await harness.provider.launch(bad)


# ---------------------------------------------------------------- what each cloud was actually asked for


async def test_gcp_request_carries_accelerators_spot_labels_and_user_data(gce: FakeGce) -> None:
    h = _gcp_harness(gce)
    try:
        pool = "p" + uuid.uuid4().hex[:8]
        (inst,) = await h.provider.launch(_req(h, pool=pool, spot=True))
        zone, name = inst.cloud_id.split("/")
        body = gce.instances[("test-project", zone, name)]
        assert body["guestAccelerators"][0]["acceleratorType"].endswith("/nvidia-l4")
        assert body["scheduling"]["provisioningModel"] == "SPOT"
        assert body["labels"][TAG_POOL] == pool
        assert body["metadata"]["items"][0]["value"].startswith("#cloud-config")
    finally:
        await h.provider.close()


async def test_azure_request_is_spot_with_eviction_policy_and_polls_the_fake(arm: FakeAzureCompute) -> None:
    h = _azure_harness(arm)
    try:
        polls_before = arm.polls
        (inst,) = await h.provider.launch(_req(h, pool="azspot", spot=True))
        vm = arm.vms[("gpufleet-test", inst.cloud_id)]
        assert vm["properties"]["priority"] == "Spot"
        assert vm["properties"]["evictionPolicy"] == "Delete"
        assert vm["properties"]["billingProfile"]["maxPrice"] == -1
        assert vm["properties"]["osProfile"]["customData"]  # base64 cloud-init
        assert arm.polls >= polls_before + 2  # the LRO was polled on the fake
    finally:
        await h.provider.close()


async def test_azure_failed_allocation_leaves_no_vm(arm: FakeAzureCompute) -> None:
    h = _azure_harness(arm)
    try:
        h.inject("capacity")
        req = _req(h, pool="azfail")
        with pytest.raises(InsufficientCapacityError):
            await h.provider.launch(req)
        assert await h.provider.list_instances({TAG_POOL: "azfail"}) == []
    finally:
        await h.provider.close()


@pytest.mark.parametrize(("cloud", "itype"), [("gcp", "g2-standard-96"), ("azure", "Standard_NC64as_T4_v3")])
async def test_a_type_the_cloud_rejects_is_invalid_input(
    cloud: str, itype: str, request: pytest.FixtureRequest
) -> None:
    h = (
        _gcp_harness(request.getfixturevalue("gce"))
        if cloud == "gcp"
        else _azure_harness(request.getfixturevalue("arm"))
    )
    try:
        req = LaunchRequest(instance_type=itype, region=h.region, token=uuid.uuid4().hex, tags={TAG_POOL: "rejected"})
        with pytest.raises(InvalidInputError, match="instance_type"):
            await h.provider.launch(req)
        assert await h.provider.list_instances({TAG_POOL: "rejected"}) == []
    finally:
        await h.provider.close()


async def test_aws_request_carries_spot_market_tags_and_user_data(moto_endpoint: str) -> None:
    import base64

    h = _aws_harness(moto_endpoint)
    try:
        pool = "p" + uuid.uuid4().hex[:8]
        (inst,) = await h.provider.launch(_req(h, pool=pool, spot=True))
        from gpufleet.coordinator.providers.aws import AwsProvider

        assert isinstance(h.provider, AwsProvider), type(h.provider)
        ec2 = h.provider.client("us-east-1")
        raw = ec2.describe_instances(InstanceIds=[inst.cloud_id])["Reservations"][0]["Instances"][0]
        assert raw["InstanceLifecycle"] == "spot"
        assert {t["Key"]: t["Value"] for t in raw["Tags"]}[TAG_POOL] == pool
        attr = ec2.describe_instance_attribute(InstanceId=inst.cloud_id, Attribute="userData")
        assert base64.b64decode(attr["UserData"]["Value"]).decode().startswith("#cloud-config")
    finally:
        await h.provider.close()
