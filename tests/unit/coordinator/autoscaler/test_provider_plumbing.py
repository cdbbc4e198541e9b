"""Provider registry, decorators (metrics, retries of transient errors only), static provider, error tables."""

from __future__ import annotations

import pytest

from gpufleet.common.errors import (
    InstanceNotFoundError,
    InsufficientCapacityError,
    InvalidInputError,
    ProviderUnavailableError,
    QuotaExceededError,
)
from gpufleet.common.retry import RetryPolicy
from gpufleet.coordinator.providers.base import TAG_POOL, InstanceState, LaunchRequest
from gpufleet.coordinator.providers.decorators import PROVIDER_CALLS, MeteredProvider, RetryingProvider
from gpufleet.coordinator.providers.fake import FakeProvider
from gpufleet.coordinator.providers.registry import ProviderRegistry, create_provider
from gpufleet.coordinator.providers.static import StaticHost, StaticProvider

FAST = RetryPolicy(initial_s=0.001, max_interval_s=0.001, max_attempts=3)


def _req(token: str = "t1") -> LaunchRequest:
    return LaunchRequest(instance_type="sim-l4x1", region="local-a", token=token, tags={TAG_POOL: "p"})


async def test_retrying_retries_transient_errors_only() -> None:
    fake = FakeProvider()
    p = RetryingProvider(fake, FAST)
    fake.fail_next(ProviderUnavailableError("blip"))
    fake.fail_next(ProviderUnavailableError("blip"))
    assert len(await p.launch(_req())) == 1
    assert fake.launch_calls == 3
    fake.fail_next(InsufficientCapacityError("none"))
    with pytest.raises(InsufficientCapacityError):
        await p.launch(_req("t2"))
    assert fake.launch_calls == 4  # not retried: the caller picks another option
    for _ in range(3):
        fake.fail_next(ProviderUnavailableError("down"))
    with pytest.raises(ProviderUnavailableError):
        await p.launch(_req("t3"))


async def test_metered_counts_outcomes() -> None:
    fake = FakeProvider(name="fake-metered")
    p = MeteredProvider(fake)
    await p.launch(_req())
    fake.fail_next(QuotaExceededError("quota"))
    with pytest.raises(QuotaExceededError):
        await p.launch(_req("t2"))
    assert PROVIDER_CALLS.labels("fake-metered", "launch", "ok")._value.get() == 1
    assert PROVIDER_CALLS.labels("fake-metered", "launch", "QuotaExceededError")._value.get() == 1


async def test_registry_creates_decorated_providers_and_names_bad_settings() -> None:
    p = create_provider("fake", {"name": "fake"})
    assert isinstance(p, MeteredProvider) and p.name == "fake"
    reg = ProviderRegistry([p])
    assert reg.names() == ["fake"] and "fake" in reg
    with pytest.raises(InvalidInputError, match="provider"):
        create_provider("ibm")
    with pytest.raises(InvalidInputError, match="no provider named"):
        reg.get("aws")
    with pytest.raises(InvalidInputError, match=r"providers\.aws\.regions"):
        create_provider("aws", {})
    with pytest.raises(InvalidInputError, match=r"providers\.gcp\.regions\.us-central1\.zones"):
        create_provider("gcp", {"project": "p", "regions": {"us-central1": {}}})
    with pytest.raises(InvalidInputError, match=r"providers\.azure\.regions\.eastus\.subnet_id"):
        create_provider("azure", {"subscription_id": "s", "resource_group": "g", "regions": {"eastus": {"image": {}}}})
    await reg.close()


async def test_static_hosts_are_listed_never_bought_and_released_on_terminate() -> None:
    p = StaticProvider([StaticHost("rack1-gpu1", "10.0.0.1"), StaticHost("rack1-gpu2", "10.0.0.2")])
    assert not p.capabilities()
    assert [i.cloud_id for i in await p.list_instances()] == ["rack1-gpu1", "rack1-gpu2"]
    with pytest.raises(InsufficientCapacityError):
        await p.launch(_req())
    await p.terminate(["rack1-gpu1"])
    states = {i.cloud_id: i.state for i in await p.list_instances()}
    assert states == {"rack1-gpu1": InstanceState.TERMINATED, "rack1-gpu2": InstanceState.RUNNING}
    with pytest.raises(InstanceNotFoundError):
        await p.terminate(["rack9"])


def test_vendor_error_tables() -> None:
    from gpufleet.coordinator.providers.aws.errors import map_error as aws_map
    from gpufleet.coordinator.providers.azure.errors import map_error as azure_map
    from gpufleet.coordinator.providers.gcp.errors import map_operation_error

    class AwsLikeError(Exception):
        def __init__(self, code: str) -> None:
            self.response = {"Error": {"Code": code, "Message": code}}

    assert isinstance(aws_map(AwsLikeError("InsufficientInstanceCapacity"), "RunInstances"), InsufficientCapacityError)
    assert isinstance(aws_map(AwsLikeError("VcpuLimitExceeded"), "RunInstances"), QuotaExceededError)
    assert isinstance(aws_map(AwsLikeError("InvalidInstanceID.NotFound"), "TerminateInstances"), InstanceNotFoundError)
    assert isinstance(aws_map(AwsLikeError("SomethingNew"), "RunInstances"), ProviderUnavailableError)
    assert isinstance(map_operation_error(["ZONE_RESOURCE_POOL_EXHAUSTED"], "x", "insert"), InsufficientCapacityError)
    assert isinstance(map_operation_error(["QUOTA_EXCEEDED"], "x", "insert"), QuotaExceededError)

    class ArmError:
        def __init__(self, code: str, message: str) -> None:
            self.code, self.message = code, message

    class AzureLikeError(Exception):
        def __init__(self, code: str, message: str) -> None:
            self.error, self.status_code = ArmError(code, message), 409

    assert isinstance(
        azure_map(AzureLikeError("OperationNotAllowed", "exceeding approved quota"), "c"), QuotaExceededError
    )
    assert isinstance(
        azure_map(AzureLikeError("OperationNotAllowed", "not allowed on a stopped VM"), "c"), InvalidInputError
    )
    assert isinstance(azure_map(AzureLikeError("ZonalAllocationFailed", "none"), "c"), InsufficientCapacityError)
