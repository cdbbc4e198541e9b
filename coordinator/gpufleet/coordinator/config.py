"""Coordinator configuration: one frozen pydantic-settings model, one section per component.

Sources, highest priority first: command-line flags (passed as init values), environment variables
``GPUFLEET_COORDINATOR__<SECTION>__<FIELD>``, the TOML file given with ``--config``, then the defaults below.
Every model forbids unknown keys, so a typo is an error that names the key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gpufleet.common.errors import InvalidInputError, Problem
from gpufleet.coordinator.scheduler.config import SchedulerConfig, TeamQuota

ENV_PREFIX = "GPUFLEET_COORDINATOR__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    listen: str = "127.0.0.1:7070"
    """HOST:PORT the gRPC server binds (port 0: pick a free one)."""
    advertise: str = ""
    """Address other replicas, agents and clients use to reach this one (default: the bound listen address)."""
    shutdown_grace_s: float = 2.0
    """How long in-flight RPCs may finish on shutdown."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Prometheus ``/metrics`` port (0: off): leader flag, jobs and nodes by state, GPU capacity and allocation."""
    metrics_host: str = "0.0.0.0"


class StoreConfig(_Section):
    url: str = "embedded"
    """``etcd://h1:2379,h2:2379`` or ``embedded`` / ``embedded:///path/store.db``."""


class LeadershipConfig(_Section):
    ttl_s: int = Field(default=3, ge=1)
    """Leader lease TTL: a leader that cannot refresh it for this long loses leadership."""


class LivenessConfig(_Section):
    node_timeout_s: float = Field(default=15.0, gt=0)
    """A node whose agent has been gone this long becomes NOT_READY and its jobs are lost (then requeued)."""
    check_interval_s: float = Field(default=0.5, gt=0)
    failover_grace_s: float = Field(default=35.0, ge=0)
    """After a replica becomes leader, a node that has not reconnected yet gets this long (at least
    node_timeout_s) before it is NOT_READY: agents stuck on a paused old leader notice its silence after 30 s."""


class AgentsConfig(_Section):
    status_interval_ms: int = Field(default=500, ge=50)
    """How often agents send AgentStatus (told to them in RegisterAck)."""
    resync_interval_s: float = Field(default=3.0, gt=0)
    """DesiredState is pushed after every change and at least this often."""
    grace_period_s: int = Field(default=10, ge=0)
    """SIGTERM -> SIGKILL grace given to agents for stopped jobs."""
    log_timeout_s: float = Field(default=10.0, gt=0)
    join_token: str = ""
    """Agents must present this token when they register (agent ``--join-token`` / ``[connection] join_token``);
    empty: any agent that reaches the coordinator may join. New autoscaled nodes are given it by default."""


class SchedulingConfig(_Section):
    tick_s: float = Field(default=2.0, gt=0)
    """Periodic scheduling cycle (cycles also run on every new job, node change and job exit)."""
    min_interval_s: float = Field(default=0.02, ge=0)
    """Pause after a trigger before a cycle runs, so a burst of submissions is planned together."""
    txn_chunk: int = Field(default=48, ge=1, le=120)
    """Placements committed per store transaction (etcd allows 128 operations per txn by default)."""


class DrainConfig(_Section):
    default_deadline_s: int = Field(default=300, ge=0)


class JobsConfig(_Section):
    retention_s: float = Field(default=604_800.0, ge=0)
    """How long a finished job (succeeded, failed, cancelled) is kept after it ended; then the leader removes it
    and keeps what it cost per day, team and project. 0 keeps finished jobs forever (the store grows)."""
    gc_interval_s: float = Field(default=60.0, gt=0)
    """How often the leader looks for finished jobs past their retention."""


class CostConfig(_Section):
    default_price_micros_per_gpu_hour: int = Field(default=2_000_000, ge=0)
    """Price of one GPU-hour on a node without the ``gpufleet.io/price-per-gpu-hour-micros`` label."""
    budget_refresh_s: float = Field(default=30.0, gt=0)


class CoordinatorSettings(BaseSettings):
    """Everything ``gpufleet coordinator`` can be told. See the module docstring for sources."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True, toml_file=None
    )

    id: str = ""
    """Replica identity (default: hostname-port)."""
    state_dir: Path = Path("/var/lib/gpufleet/coordinator")
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    leadership: LeadershipConfig = LeadershipConfig()
    liveness: LivenessConfig = LivenessConfig()
    agents: AgentsConfig = AgentsConfig()
    scheduling: SchedulingConfig = SchedulingConfig()
    drain: DrainConfig = DrainConfig()
    cost: CostConfig = CostConfig()
    jobs: JobsConfig = JobsConfig()
    scheduler: dict[str, Any] = Field(default_factory=dict)
    """Passed to the scheduler's ``SchedulerConfig`` (team quotas, ...); validated there."""
    autoscaler: dict[str, Any] | None = None
    """``AutoscalerConfig`` (pools, ...) plus ``bootstrap``; absent: no autoscaling. See autoscaling.py."""
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per cloud provider kind, the settings handed to its factory (providers/registry.py)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        del dotenv_settings, file_secret_settings
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def load_settings(config_file: Path | None = None, **overrides: Any) -> CoordinatorSettings:
    """Build the settings from ``config_file`` (TOML), the environment and ``overrides`` (nested dicts).

    Raises InvalidInputError with one Problem per bad key, each naming the dotted key path.
    """
    if config_file is not None and not config_file.is_file():
        raise InvalidInputError(Problem("--config", f"no such file: {config_file}"))

    problems = unknown_env_keys(os.environ)
    if problems:
        raise InvalidInputError(problems)

    class _FromFile(CoordinatorSettings):
        model_config = SettingsConfigDict(toml_file=config_file)

    try:
        return _FromFile(**overrides)
    except ValidationError as exc:
        raise InvalidInputError(validation_problems(exc)) from None
    except ValueError as exc:  # TOML syntax errors surface as ValueError subclasses
        raise InvalidInputError(Problem("--config", f"cannot read {config_file}: {exc}")) from None


def unknown_env_keys(environ: Mapping[str, str]) -> list[Problem]:
    """``GPUFLEET_COORDINATOR__*`` variables that name no setting (pydantic-settings ignores those silently)."""
    problems = []
    for name in environ:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        field = CoordinatorSettings.model_fields.get(parts[0])
        ok = field is not None
        if (
            field is not None
            and len(parts) > 1
            and isinstance(field.annotation, type)
            and issubclass(field.annotation, BaseModel)
        ):
            ok = parts[1] in field.annotation.model_fields and len(parts) == 2
        if not ok:
            problems.append(Problem(name, "unknown setting (check the spelling; see docs/architecture/coordinator.md)"))
    return problems


def validation_problems(exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling; see docs/architecture/coordinator.md)"
        problems.append(Problem(path, msg))
    return problems


def scheduler_config(section: dict[str, Any], budget_exhausted: Callable[[str], bool] | None = None) -> SchedulerConfig:
    """Build the scheduler's config from the ``[scheduler]`` section (``quotas.<team>.guaranteed_milli`` ...)."""
    data = dict(section)
    quotas_in = data.pop("quotas", {}) or {}
    if not isinstance(quotas_in, dict):
        raise InvalidInputError(Problem("scheduler.quotas", "must be a table of team -> quota"))
    quotas = {}
    for team, q in quotas_in.items():
        if not isinstance(q, dict):
            raise InvalidInputError(Problem(f"scheduler.quotas.{team}", "must be a table"))
        known = {f.name for f in dataclasses.fields(TeamQuota)}
        for key in q:
            if key not in known:
                raise InvalidInputError(
                    Problem(f"scheduler.quotas.{team}.{key}", f"unknown setting; valid: {', '.join(sorted(known))}")
                )
        quotas[team] = TeamQuota(**q)
    known = {f.name for f in dataclasses.fields(SchedulerConfig)} - {"quotas", "budget_exhausted"}
    for key in data:
        if key not in known:
            raise InvalidInputError(Problem(f"scheduler.{key}", f"unknown setting; valid: {', '.join(sorted(known))}"))
    if "budget_exhausted_teams" in data:
        data["budget_exhausted_teams"] = frozenset(data["budget_exhausted_teams"])
    return SchedulerConfig(quotas=quotas, budget_exhausted=budget_exhausted, **data)
