"""``FakeProvider``: a cloud simulated in-process, optionally running each instance as a local simulated agent.

See providers/base.py for the contract. Instances live in memory; a launch token maps to the instances it
created (idempotent relaunch). Tests and the demo steer it like a cloud that runs out of things:
``set_capacity(type, region, spot, n)`` limits how many more may run (then ``InsufficientCapacityError``),
``set_quota(n)`` caps the number of running instances (``QuotaExceededError``), and ``fail_next(error)`` makes
the next call raise ``error`` (e.g. ``ProviderUnavailableError`` to exercise retries).

With ``agent`` settings, every instance is a real ``gpufleet agent --simulate MODEL:COUNT`` process that joins
the coordinator, so the whole autoscaling loop runs end to end on one machine; terminate kills the process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpufleet.common.clock import Clock, SystemClock
from gpufleet.common.errors import (
    InsufficientCapacityError,
    InvalidInputError,
    Problem,
    ProviderError,
    QuotaExceededError,
)
from gpufleet.coordinator.providers.base import (
    Capability,
    InstanceState,
    LaunchRequest,
    ProviderInstance,
    managed_tags,
    matches_tags,
)
from gpufleet.coordinator.providers.catalog import ProviderCatalog, load_builtin


@dataclass(frozen=True, slots=True)
class FakeAgentSettings:
    """How to start a simulated agent per instance."""

    coordinator: str  # host:port of a coordinator replica
    state_root: Path  # each agent gets state_root/<node name>
    python: str = sys.executable
    extra_args: tuple[str, ...] = ()


class FakeProvider:
    """See providers/base.py. ``catalog`` defaults to the built-in ``fake`` catalog."""

    name = "fake"

    def __init__(
        self,
        catalog: ProviderCatalog | None = None,
        *,
        agent: FakeAgentSettings | None = None,
        clock: Clock | None = None,
        name: str = "fake",
    ) -> None:
        self.name = name
        self.catalog = catalog or load_builtin("fake")
        self.agent = agent
        self.clock = clock or SystemClock()
        self._instances: dict[str, ProviderInstance] = {}
        self._by_token: dict[str, list[str]] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._ids = itertools.count(1)
        self._capacity: dict[tuple[str, str, bool], int] = {}
        self._quota: int | None = None
        self._fail_next: list[ProviderError] = []
        self.launch_calls = 0

    # ---------------------------------------------------------------- steering (tests, demo)
    def set_capacity(self, instance_type: str, region: str, spot: bool, remaining: int) -> None:
        self._capacity[(instance_type, region, spot)] = remaining

    def set_quota(self, max_running: int | None) -> None:
        self._quota = max_running

    def fail_next(self, error: ProviderError) -> None:
        self._fail_next.append(error)

    def interrupt(self, cloud_id: str) -> None:
        """Simulate the cloud reclaiming a spot instance: it disappears (its agent process is killed)."""
        self._set_state(cloud_id, InstanceState.TERMINATED)
        self._kill(cloud_id)

    # ---------------------------------------------------------------- contract
    def capabilities(self) -> frozenset[Capability]:
        caps = {Capability.SPOT, Capability.IDEMPOTENT_LAUNCH, Capability.PROVISIONS, Capability.MAX_PRICE}
        if self.agent is not None:
            caps.add(Capability.LOCAL_PROCESSES)
        return frozenset(caps)

    def _raise_injected(self) -> None:
        if self._fail_next:
            raise self._fail_next.pop(0)

    async def launch(self, request: LaunchRequest) -> list[ProviderInstance]:
        self.launch_calls += 1
        self._raise_injected()
        existing = self._by_token.get(request.token)
        if existing is not None:
            return [self._instances[i] for i in existing]
        itype = self.catalog.get(request.instance_type)
        zones = self.catalog.zones(request.region)
        if request.region not in itype.prices:
            raise InvalidInputError(Problem("region", f"{itype.name} is not offered in {request.region}"))
        price = itype.price(request.region, request.spot)
        if price is None:
            raise InsufficientCapacityError(
                f"no {'spot' if request.spot else 'on-demand'} {itype.name} market in {request.region}"
            )
        if request.spot and request.max_price_micros and price > request.max_price_micros:
            raise InsufficientCapacityError(
                f"spot price {price} of {itype.name} in {request.region} is above max price {request.max_price_micros}"
            )
        key = (itype.name, request.region, request.spot)
        remaining = self._capacity.get(key)
        if remaining is not None and remaining < request.count:
            raise InsufficientCapacityError(
                f"insufficient capacity for {request.count}x {itype.name} ({'spot' if request.spot else 'on-demand'}) in {request.region}"
            )
        running = sum(1 for i in self._instances.values() if i.state != InstanceState.TERMINATED)
        if self._quota is not None and running + request.count > self._quota:
            raise QuotaExceededError(f"instance quota {self._quota} reached ({running} running)")
        if remaining is not None:
            self._capacity[key] = remaining - request.count
        out: list[ProviderInstance] = []
        tags = managed_tags(request)
        for n in range(request.count):
            cloud_id = f"fake-{next(self._ids):06d}"
            node_name = request.node_names[n] if n < len(request.node_names) else cloud_id
            inst = ProviderInstance(
                cloud_id=cloud_id,
                provider=self.name,
                instance_type=itype.name,
                region=request.region,
                zone=request.zone or zones[0],
                spot=request.spot,
                state=InstanceState.RUNNING if self.agent is None else InstanceState.PENDING,
                tags={**tags, "gpufleet-node": node_name},
                launched_ms=self.clock.now_ms(),
                private_ip="127.0.0.1",
            )
            self._instances[cloud_id] = inst
            out.append(inst)
            if self.agent is not None:
                self._start_agent(inst, node_name, itype.gpu_model, itype.gpu_count)
                self._set_state(cloud_id, InstanceState.RUNNING)
        self._by_token[request.token] = [i.cloud_id for i in out]
        return [self._instances[i.cloud_id] for i in out]

    async def list_instances(self, tags: Mapping[str, str] | None = None) -> list[ProviderInstance]:
        self._raise_injected()
        self._reap()
        return [i for i in self._instances.values() if matches_tags(i.tags, tags)]

    async def terminate(self, cloud_ids: Sequence[str]) -> None:
        self._raise_injected()
        for cid in cloud_ids:
            if cid not in self._instances:
                continue  # already gone: terminate is idempotent
            self._set_state(cid, InstanceState.TERMINATED)
            self._kill(cid)

    async def close(self) -> None:
        for cid in list(self._procs):
            self._kill(cid)

    # ---------------------------------------------------------------- local agent processes
    def _set_state(self, cloud_id: str, state: InstanceState) -> None:
        old = self._instances[cloud_id]
        self._instances[cloud_id] = ProviderInstance(
            old.cloud_id, old.provider, old.instance_type, old.region, old.zone, old.spot, state, old.tags,
            old.launched_ms, old.private_ip,
        )  # fmt: skip

    def _start_agent(self, inst: ProviderInstance, node_name: str, gpu_model: str, gpu_count: int) -> None:
        assert self.agent is not None
        state_dir = self.agent.state_root / node_name
        state_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            self.agent.python, "-m", "gpufleet.common.cli", "agent",
            "--coordinator", self.agent.coordinator,
            "--name", node_name,
            "--simulate", f"{gpu_model}:{gpu_count}",
            "--state-dir", str(state_dir),
            "--provider", self.name,
            "--region", inst.region,
            "--instance-type", inst.instance_type,
            *self.agent.extra_args,
        ]  # fmt: skip
        log = (state_dir / "agent.log").open("ab")
        try:
            self._procs[inst.cloud_id] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ}
            )
        finally:
            log.close()

    def _kill(self, cloud_id: str) -> None:
        proc = self._procs.pop(cloud_id, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def _reap(self) -> None:
        """An agent process that exited on its own is an instance that died."""
        for cid, proc in list(self._procs.items()):
            if proc.poll() is not None:
                self._procs.pop(cid)
                self._set_state(cid, InstanceState.TERMINATED)


def create(settings: dict[str, object]) -> FakeProvider:
    """Registry factory. Settings: ``coordinator`` and ``state_root`` start local agents; ``name`` renames it."""
    agent = None
    if settings.get("coordinator"):
        agent = FakeAgentSettings(
            str(settings["coordinator"]), Path(str(settings.get("state_root", "/tmp/gpufleet-fake")))
        )
    return FakeProvider(agent=agent, name=str(settings.get("name", "fake")))
