"""Wire the autoscaler (``gpufleet.coordinator.autoscaler``) into a coordinator from its configuration.

Only when the ``[autoscaler]`` section is present::

    [autoscaler]                 # AutoscalerConfig: pools, interval_s, ...
    interval_s = 10
    [[autoscaler.pools]]
    name = "h100" ...
    [autoscaler.bootstrap]       # what new cloud machines are told (default: this replica's address)
    coordinators = ["10.0.0.1:7070", "10.0.0.2:7070"]
    join_token = "..."
    [providers.aws]              # settings handed to each provider's factory (providers/registry.py)
    region = "us-east-1"

The autoscaler runs only on the leader (registered as a LeaderOnly after the coordinator's own runtime), reads
the leader's fleet view, cordons and drains through the node manager, keeps its instance records in the store
with fenced writes, answers ClusterService.ListInstances and hears about agents' spot interruptions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from gpufleet.common.errors import InvalidInputError, Problem
from gpufleet.coordinator.app import Coordinator
from gpufleet.coordinator.config import CoordinatorSettings, validation_problems
from gpufleet.proto.v1 import types_pb2 as pb

if TYPE_CHECKING:  # keeps the autoscaler and cloud SDK imports lazy
    from gpufleet.coordinator.autoscaler.service import Autoscaler


def _parts(settings: CoordinatorSettings, default_address: str) -> tuple[Any, Any, dict[str, Any]]:
    from gpufleet.coordinator.autoscaler.bootstrap import BootstrapConfig
    from gpufleet.coordinator.autoscaler.config import AutoscalerConfig

    section = dict(settings.autoscaler or {})
    boot = dict(section.pop("bootstrap", {}) or {})
    try:
        config = AutoscalerConfig.model_validate(section)
    except ValidationError as exc:
        raise InvalidInputError(
            [Problem(f"autoscaler.{p.field}", p.message) for p in validation_problems(exc)]
        ) from None
    known = {"coordinators", "join_token", "package", "extra_labels"}
    for key in boot:
        if key not in known:
            raise InvalidInputError(
                Problem(f"autoscaler.bootstrap.{key}", f"unknown setting; valid: {', '.join(sorted(known))}")
            )
    boot.setdefault("coordinators", [default_address] if default_address else [])
    boot.setdefault("join_token", settings.agents.join_token)  # new nodes join with the token agents must show
    boot["coordinators"] = tuple(boot["coordinators"])
    return config, BootstrapConfig(**boot), dict(settings.providers)


def check_autoscaler_config(settings: CoordinatorSettings) -> None:
    """Validate the autoscaler sections without building anything (``--check-config``)."""
    if settings.autoscaler is not None:
        _parts(settings, settings.server.advertise)


def attach_autoscaler(c: Coordinator, settings: CoordinatorSettings) -> Autoscaler | None:
    """Build the autoscaler if configured and register it as a leader-only subsystem of ``c``."""
    if settings.autoscaler is None:
        return None
    from gpufleet.coordinator.autoscaler.reconciler import ClusterPorts
    from gpufleet.coordinator.autoscaler.service import Autoscaler
    from gpufleet.coordinator.autoscaler.storage import StoreInstanceStorage
    from gpufleet.coordinator.providers.registry import ProviderRegistry, create_provider

    config, bootstrap, provider_settings = _parts(settings, c.address)
    kinds = sorted({p.provider for p in config.pools} | set(provider_settings))
    registry = ProviderRegistry([create_provider(kind, provider_settings.get(kind, {})) for kind in kinds])

    async def cordon(node: str, reason: str) -> None:
        await c.nodes.cordon(node, reason)

    async def drain(node: str, reason: str, deadline_ms: int) -> None:
        await c.nodes.drain(node, max(1, (deadline_ms - c.clock.now_ms()) // 1000), reason)

    ports = ClusterPorts(
        nodes=lambda: list(c.view.nodes.values()),
        pending_jobs=lambda: c.view.jobs_in(pb.JOB_STATE_PENDING),
        running_jobs=lambda: c.view.jobs_in(pb.JOB_STATE_SCHEDULED, pb.JOB_STATE_RUNNING),
        cordon=cordon,
        drain=drain,
    )
    scaler = Autoscaler(
        config,
        registry,
        ports,
        storage=StoreInstanceStorage(c.store, c.elector.leader_txn, c.clock.now_ms),
        bootstrap=bootstrap,
        clock=c.clock,
    )
    c.add_leader_subsystem(scaler)
    c.instances = scaler.cloud_instances
    c.interruption_handlers.append(scaler.handle_interruption)
    return scaler
