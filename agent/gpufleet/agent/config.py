"""AgentSettings: the agent daemon's configuration.

Sources, later ones win: defaults < TOML file (``--config``, default /etc/gpufleet/agent.toml when it exists)
< environment (``GPUFLEET_AGENT__FIELD``, nested sections with ``__``, e.g. ``GPUFLEET_AGENT__JOBS__
DEFAULT_GRACE_PERIOD_S``; ``GPUFLEET_COORDINATOR`` also sets the coordinator list) < command-line flags.
Settings are frozen and unknown keys are errors that name the key (a typo never silently does nothing).
Each component gets its own section: ``connection`` -> CoordinatorClient, ``jobs`` -> JobManager,
``sharing`` -> GpuSharing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from gpufleet.agent.enforcement.config import SharingConfig
from gpufleet.agent.interruptions import WATCHERS, InterruptionSettings
from gpufleet.common.errors import InvalidInputError, Problem

DEFAULT_CONFIG_FILE = Path("/etc/gpufleet/agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/gpufleet/agent")
ENV_PREFIX = "GPUFLEET_AGENT__"
COORDINATOR_ENV = "GPUFLEET_COORDINATOR"
_NODE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")


def _split_list(v: object) -> object:
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()]
    return v


class ConnectionSettings(BaseModel):
    """How the agent talks to the coordinators."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rpc_timeout_s: float = Field(default=5.0, gt=0)
    """Deadline for opening the stream and for each unary call."""
    reconnect_initial_s: float = Field(default=0.2, gt=0)
    """First backoff after a lost or refused connection (grows x1.5 up to reconnect_max_s, +/-20% jitter)."""
    reconnect_max_s: float = Field(default=5.0, gt=0)
    """Longest backoff between connection attempts."""
    default_status_interval_ms: int = Field(default=2000, ge=100)
    """Status period until the coordinator's RegisterAck sets one."""
    join_token: str = ""
    """Sent in Register; the coordinator may require it."""


class JobsSettings(BaseModel):
    """How the agent runs jobs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default_grace_period_s: int = Field(default=30, ge=0)
    """SIGTERM -> SIGKILL delay when the coordinator's DesiredJob does not set one."""
    check_interval_s: float = Field(default=0.5, gt=0)
    """How often running jobs are checked for exit."""
    log_retention_h: float = Field(default=168.0, ge=0)
    """How long logs of acknowledged (finished) jobs are kept."""


class AgentSettings(BaseSettings):
    """Configuration of one agent daemon. See the module docstring for sources and precedence."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        case_sensitive=False,
    )
    _toml_file: ClassVar[Path | None] = None

    name: str = Field(default_factory=lambda: socket.gethostname().split(".")[0].lower())
    """Node name (unique in the fleet): lowercase letters, digits, '-' and '.'."""
    coordinators: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Coordinator addresses host:port; any replica works (followers redirect to the leader)."""
    state_dir: Path = DEFAULT_STATE_DIR
    """Job records, logs and exit files; must survive agent restarts."""
    gpu_backend: str = "nvml"
    """``nvml`` on GPU hosts, or ``simulate:MODEL:COUNT[,MODEL:COUNT]`` (e.g. simulate:H100-80GB:8)."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Prometheus /metrics port (0: disabled)."""
    metrics_host: str = "0.0.0.0"
    """Address the metrics server binds to."""
    address: str = ""
    """Address other nodes use to reach this one (gang rendezvous); default: the hostname's address."""
    provider: str = ""
    region: str = ""
    zone: str = ""
    instance_type: str = ""
    instance_id: str = ""
    spot: bool = False
    labels: dict[str, str] = Field(default_factory=dict)
    cpu_milli: int = Field(default=0, ge=0)
    """CPU millicores offered to jobs (0: every CPU of this host); leave some for the system on big hosts."""
    memory_mib: int = Field(default=0, ge=0)
    """Host memory offered to jobs, MiB (0: all of this host's memory)."""
    connection: ConnectionSettings = ConnectionSettings()
    jobs: JobsSettings = JobsSettings()
    sharing: SharingConfig = SharingConfig()
    interruptions: InterruptionSettings = InterruptionSettings()
    """Cloud interruption (spot) watcher; provider ``auto`` uses ``provider`` above, else local DMI evidence."""

    @field_validator("coordinators", mode="before")
    @classmethod
    def _coordinators(cls, v: object) -> object:
        return _split_list(v)

    @field_validator("coordinators")
    @classmethod
    def _check_coordinators(cls, v: list[str]) -> list[str]:
        for addr in v:
            host, sep, port = addr.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{addr!r} is not host:port (e.g. coord1.example:7070)")
        return v

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NODE_NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid node name: use lowercase letters, digits, '-' and '.'")
        return v

    @field_validator("gpu_backend")
    @classmethod
    def _check_backend(cls, v: str) -> str:
        kind = v.partition(":")[0]
        if kind not in ("nvml", "simulate", "simulated"):
            raise ValueError(f"{v!r}: use 'nvml' or 'simulate:MODEL:COUNT[,MODEL:COUNT]'")
        return v

    @field_validator("sharing", mode="before")
    @classmethod
    def _check_sharing(cls, v: object) -> object:
        if isinstance(v, Mapping):
            known = {f.name for f in dataclasses.fields(SharingConfig)}
            unknown = sorted(set(v) - known)
            if unknown:
                raise ValueError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            return SharingConfig(**v)
        return v

    @field_validator("interruptions", mode="before")
    @classmethod
    def _check_interruptions(cls, v: object) -> object:
        if isinstance(v, Mapping):
            known = {f.name for f in dataclasses.fields(InterruptionSettings)}
            unknown = sorted(set(v) - known)
            if unknown:
                raise ValueError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            provider = v.get("provider", "auto")
            if provider not in ("auto", "none", *WATCHERS):
                raise ValueError(f"provider {provider!r}: use auto, none, {', '.join(WATCHERS)}")
            return TypeAdapter(InterruptionSettings).validate_python(dict(v))
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls, cls._toml_file))


class _TomlSource(PydanticBaseSettingsSource):
    """The TOML file, parsed here so a syntax error names the file and line."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.data: dict[str, Any] = {}
        if path is not None:
            try:
                self.data = tomllib.loads(path.read_text())
            except OSError as e:
                raise InvalidInputError(Problem("--config", f"cannot read {path}: {e.strerror}")) from e
            except tomllib.TOMLDecodeError as e:
                raise InvalidInputError(Problem("--config", f"{path} is not valid TOML: {e}")) from e

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # noqa: ARG002
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentSettings:
    """Build settings from the file, the environment and ``overrides`` (command-line flags, dotted keys not
    supported: pass sections as dicts). Raises InvalidInputError naming each bad field and its fix."""
    env = os.environ
    if config_file is None and DEFAULT_CONFIG_FILE.is_file():
        config_file = DEFAULT_CONFIG_FILE
    unknown = sorted(
        k
        for k in env
        if k.upper().startswith(ENV_PREFIX)
        and k[len(ENV_PREFIX) :].split("__")[0].lower() not in AgentSettings.model_fields
    )
    if unknown:
        raise InvalidInputError(
            [Problem(k, "unknown setting in the environment; remove it or fix its spelling") for k in unknown]
        )
    init: dict[str, Any] = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "coordinators" not in init and f"{ENV_PREFIX}COORDINATORS" not in env and env.get(COORDINATOR_ENV):
        init["coordinators"] = env[COORDINATOR_ENV]

    class _Loaded(AgentSettings):
        _toml_file: ClassVar[Path | None] = config_file

    try:
        settings: AgentSettings = _Loaded(**init)
    except ValidationError as e:
        raise InvalidInputError([_problem(err, config_file) for err in e.errors()]) from None
    if not settings.coordinators:
        raise InvalidInputError(
            Problem(
                "coordinators",
                "no coordinator address; pass --coordinator HOST:PORT[,HOST:PORT...], set GPUFLEET_COORDINATOR, "
                "or set coordinators = [...] in the config file",
            )
        )
    return settings


_FLAG_FIX = {
    "name": "--name",
    "coordinators": "--coordinator",
    "state_dir": "--state-dir",
    "gpu_backend": "--simulate",
    "metrics_port": "--metrics-port",
    "address": "--address",
    "labels": "--label",
    "cpu_milli": "--cpu",
    "memory_mib": "--memory",
}


def _problem(err: Any, config_file: Path | None) -> Problem:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", "invalid")
    if err.get("type") == "extra_forbidden":
        where = f" in {config_file}" if config_file else ""
        env_name = ENV_PREFIX + loc.upper().replace(".", "__")
        msg = f"unknown setting{where} (or {env_name}); remove it or fix its spelling"
    else:
        top = loc.split(".")[0]
        flag = _FLAG_FIX.get(top)
        msg = f"{msg}" + (f" (set with {flag}, the config file or {ENV_PREFIX}{top.upper()})" if flag else "")
    return Problem(loc, msg)
