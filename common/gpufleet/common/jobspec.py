"""The job spec users write (YAML), validated into the v1 ``JobSpec`` message.

Two layers, one rule set:
- :class:`JobSpecInput` (pydantic) parses what a human typed: types, units (``20GiB``, ``0.5`` GPU,
  ``2h``), aliases from earlier designs (``gpu_fraction`` for ``gpus``, ``use_mig`` for ``mig_profile``),
  unknown fields. It converts once to ``pb.JobSpec``.
- :func:`check_spec` holds every semantic rule on ``pb.JobSpec``; the CLI runs it after parsing and the
  coordinator runs it on every SubmitJob, so a raw gRPC client gets the same answers as the CLI.
Every problem is reported, each naming its field path and what would be valid.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpufleet.common.errors import InvalidInputError, Problem
from gpufleet.common.gpu_models import MODELS, all_mig_profile_names
from gpufleet.common.quantities import (
    MILLI_PER_GPU,
    parse_cpu_milli,
    parse_gpus_milli,
    parse_memory_mib,
    parse_price_micros,
)
from gpufleet.proto.v1 import types_pb2 as pb

#: priority class name -> value; higher runs first and may preempt lower preemptible work
PRIORITY_CLASSES: dict[str, int] = {"low": 0, "normal": 100, "high": 200, "critical": 300}
SUPPORTED_BACKENDS = frozenset({"vm"})
PLANNED_BACKENDS = frozenset({"kubernetes", "slurm", "ray"})
KNOWN_PROVIDERS = frozenset({"aws", "gcp", "azure", "static", "fake"})
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62})$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d)?\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}

SPOT = {"never": pb.SPOT_POLICY_NEVER, "allowed": pb.SPOT_POLICY_ALLOWED, "required": pb.SPOT_POLICY_REQUIRED}
RESTART = {
    "never": pb.RESTART_POLICY_NEVER,
    "on_failure": pb.RESTART_POLICY_ON_FAILURE,
    "always": pb.RESTART_POLICY_ALWAYS,
}


def parse_duration_s(value: str | int) -> int:
    """``90`` / ``"90s"`` -> 90, ``"30m"`` -> 1800, ``"2h"`` -> 7200, ``"1d"`` -> 86400."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 30m, 2h or 1d")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return value
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration; write e.g. 90s, 30m, 2h or 1d")
    return int(m.group(1)) * _DURATION_UNITS[m.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ResourcesInput(_Strict):
    gpus: int | float | str | None = Field(default=None, validation_alias=AliasChoices("gpus", "gpu_fraction"))
    gpu_memory: int | str | None = None
    gpu_models: list[str] = Field(default_factory=list)
    mig_profile: str | None = Field(default=None, validation_alias=AliasChoices("mig_profile", "use_mig"))
    cpu: int | float | str | None = None
    memory: int | str | None = None

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: int | float | str | None) -> int | float | str | None:
        if v is not None:
            milli = parse_gpus_milli(v)
            if milli == 0:
                raise ValueError("must be more than 0; leave it out for a CPU-only job")
        return v

    @field_validator("gpu_memory", "memory")
    @classmethod
    def _mem(cls, v: int | str | None) -> int | str | None:
        if v is not None:
            parse_memory_mib(v)
        return v

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, v: int | float | str | None) -> int | float | str | None:
        if v is not None:
            parse_cpu_milli(v)
        return v

    @field_validator("mig_profile", mode="before")
    @classmethod
    def _mig(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("takes a MIG profile name such as 1g.10gb or 3g.40gb, not true/false")
        return v


class PlacementInput(_Strict):
    providers: list[str] = Field(default_factory=list)
    regions: list[str] = Field(default_factory=list)
    spot: Literal["never", "allowed", "required"] = "allowed"
    max_price_per_gpu_hour: float | str | None = None
    spread: bool = False

    @field_validator("max_price_per_gpu_hour")
    @classmethod
    def _price(cls, v: float | str | None) -> float | str | None:
        if v is not None:
            parse_price_micros(v)
        return v


class JobSpecInput(_Strict):
    name: str
    team: str = "default"
    project: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    command: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str = ""
    resources: ResourcesInput = Field(default_factory=ResourcesInput)
    nodes: int = 1
    priority: str = "normal"
    preemptible: bool = False
    deadline: datetime | None = None
    max_runtime: int | str | None = None
    min_runtime: int | str | None = None
    placement: PlacementInput = Field(default_factory=PlacementInput)
    backend: str = "vm"
    restart_policy: Literal["never", "on_failure", "always"] = "on_failure"
    max_restarts: int = Field(default=3, ge=0)
    strict_share: bool = False

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError(
                'must be an argv list such as ["python", "train.py"]; for a shell line write ["sh", "-c", "..."]'
            )
        return v

    @field_validator("max_runtime", "min_runtime")
    @classmethod
    def _duration(cls, v: int | str | None) -> int | str | None:
        if v is not None:
            parse_duration_s(v)
        return v

    @field_validator("env", "labels", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        # YAML turns `DEBUG: 1` into an int; env and labels are strings
        if isinstance(v, dict):
            return {k: (str(x).lower() if isinstance(x, bool) else str(x)) for k, x in v.items()}
        return v

    def to_proto(self) -> pb.JobSpec:
        r = self.resources
        p = self.placement
        deadline_ms = 0
        if self.deadline is not None:
            d = self.deadline if self.deadline.tzinfo else self.deadline.replace(tzinfo=UTC)
            deadline_ms = int(d.timestamp() * 1000)
        return pb.JobSpec(
            name=self.name,
            team=self.team,
            project=self.project,
            labels=self.labels,
            command=self.command,
            env=self.env,
            working_dir=self.working_dir,
            resources=pb.Resources(
                gpu_milli=parse_gpus_milli(r.gpus) if r.gpus is not None else 0,
                gpu_memory_mib=parse_memory_mib(r.gpu_memory) if r.gpu_memory is not None else 0,
                gpu_models=r.gpu_models,
                mig_profile=r.mig_profile or "",
                cpu_milli=parse_cpu_milli(r.cpu) if r.cpu is not None else 0,
                memory_mib=parse_memory_mib(r.memory) if r.memory is not None else 0,
            ),
            nodes=self.nodes,
            priority=self.priority,
            preemptible=self.preemptible,
            deadline_ms=deadline_ms,
            max_runtime_s=parse_duration_s(self.max_runtime) if self.max_runtime is not None else 0,
            min_runtime_s=parse_duration_s(self.min_runtime) if self.min_runtime is not None else 0,
            placement=pb.PlacementPolicy(
                providers=p.providers,
                regions=p.regions,
                spot=SPOT[p.spot],
                max_price_micros_per_gpu_hour=(
                    parse_price_micros(p.max_price_per_gpu_hour) if p.max_price_per_gpu_hour is not None else 0
                ),
                spread=p.spread,
            ),
            backend=self.backend,
            restart_policy=RESTART[self.restart_policy],
            max_restarts=self.max_restarts,
            strict_share=self.strict_share,
        )


def _fields_of(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


_MODEL_AT: dict[tuple[str, ...], type[BaseModel]] = {
    (): JobSpecInput,
    ("resources",): ResourcesInput,
    ("placement",): PlacementInput,
}


def _problems_from_pydantic(err: ValidationError) -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = tuple(str(x) for x in e["loc"])
        path = ".".join(loc)
        kind = e["type"]
        if kind == "extra_forbidden":
            parent = _MODEL_AT.get(loc[:-1])
            valid = f"; valid fields here: {_fields_of(parent)}" if parent else ""
            problems.append(Problem(path, f"unknown field{valid}"))
        elif kind == "missing":
            problems.append(Problem(path, "is required"))
        elif kind == "value_error":
            problems.append(Problem(path, str(e["ctx"]["error"]) if "ctx" in e else e["msg"]))
        elif kind == "literal_error":
            problems.append(Problem(path, f"{e['input']!r} is not valid; expected {e['ctx']['expected']}"))
        else:
            problems.append(Problem(path, f"{e['msg']} (got {e['input']!r})"))
    return problems


def check_spec(spec: pb.JobSpec) -> list[Problem]:
    """Every semantic rule on a JobSpec. Empty list: valid."""
    out: list[Problem] = []
    add = out.append
    if not spec.name:
        add(Problem("name", "is required"))
    elif not _NAME_RE.match(spec.name):
        add(Problem("name", "use 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"))
    for field in ("team", "project"):
        value = getattr(spec, field)
        if value and not _NAME_RE.match(value):
            add(Problem(field, "use lowercase letters, digits, '.', '_' or '-' (at most 63)"))
    if not spec.command or not spec.command[0]:
        add(Problem("command", 'is required: an argv list such as ["python", "train.py"]'))
    for key in spec.env:
        if not _ENV_RE.match(key):
            add(Problem(f"env.{key}", "is not a valid environment variable name (letters, digits, _)"))

    r = spec.resources
    gpu = r.gpu_milli
    if gpu < 0:
        add(Problem("resources.gpus", "cannot be negative"))
    elif gpu > MILLI_PER_GPU and gpu % MILLI_PER_GPU:
        add(Problem("resources.gpus", "above one GPU, ask for a whole number of GPUs"))
    elif gpu > 64 * MILLI_PER_GPU:
        add(Problem("resources.gpus", "at most 64 GPUs per node; use nodes: N for more"))
    models = list(r.gpu_models)
    unknown = [m for m in models if m not in MODELS]
    for m in unknown:
        add(Problem("resources.gpu_models", f"unknown GPU model {m!r}; known: {', '.join(sorted(MODELS))}"))
    known_models = [MODELS[m] for m in models if m in MODELS] or list(MODELS.values())
    if r.mig_profile:
        if gpu:
            add(Problem("resources.mig_profile", "a MIG job gets one slice; leave out resources.gpus"))
        if r.mig_profile not in all_mig_profile_names():
            add(
                Problem(
                    "resources.mig_profile",
                    f"unknown MIG profile {r.mig_profile!r}; valid: {', '.join(sorted(all_mig_profile_names()))}",
                )
            )
        elif not any(p.name == r.mig_profile for m in known_models for p in m.mig_profiles):
            add(Problem("resources.mig_profile", f"none of {', '.join(models)} offers {r.mig_profile}"))
    if r.gpu_memory_mib < 0:
        add(Problem("resources.gpu_memory", "cannot be negative"))
    elif r.gpu_memory_mib:
        if not gpu and not r.mig_profile:
            add(Problem("resources.gpu_memory", "needs resources.gpus (or a mig_profile, which sets its own memory)"))
        biggest = max(m.memory_mib for m in known_models)
        if r.gpu_memory_mib > biggest:
            add(
                Problem(
                    "resources.gpu_memory", f"{r.gpu_memory_mib} MiB is more than any allowed GPU has ({biggest} MiB)"
                )
            )
    if r.cpu_milli < 0:
        add(Problem("resources.cpu", "cannot be negative"))
    if r.memory_mib < 0:
        add(Problem("resources.memory", "cannot be negative"))

    if spec.nodes < 1:
        add(Problem("nodes", "must be at least 1"))
    elif spec.nodes > 1 and 0 < gpu < MILLI_PER_GPU:
        add(Problem("nodes", "a multi-node gang needs whole GPUs per node (resources.gpus >= 1)"))
    elif spec.nodes > 1 and r.mig_profile:
        add(Problem("nodes", "a multi-node gang cannot use MIG slices"))
    if spec.priority and spec.priority not in PRIORITY_CLASSES:
        add(Problem("priority", f"unknown priority class {spec.priority!r}; valid: {', '.join(PRIORITY_CLASSES)}"))
    if spec.max_runtime_s < 0 or spec.min_runtime_s < 0:
        add(Problem("max_runtime", "durations cannot be negative"))
    if spec.max_runtime_s and spec.min_runtime_s > spec.max_runtime_s:
        add(Problem("min_runtime", "cannot exceed max_runtime"))
    if spec.deadline_ms < 0:
        add(Problem("deadline", "must be a date-time such as 2026-12-01T00:00:00Z"))

    pl = spec.placement
    for prov in pl.providers:
        if prov not in KNOWN_PROVIDERS:
            add(
                Problem(
                    "placement.providers", f"unknown provider {prov!r}; valid: {', '.join(sorted(KNOWN_PROVIDERS))}"
                )
            )
    if pl.max_price_micros_per_gpu_hour < 0:
        add(Problem("placement.max_price_per_gpu_hour", "cannot be negative"))

    backend = spec.backend or "vm"
    if backend in PLANNED_BACKENDS:
        add(Problem("backend", f"backend {backend!r} is not supported yet; use 'vm' (the default)"))
    elif backend not in SUPPORTED_BACKENDS:
        add(Problem("backend", f"unknown backend {backend!r}; valid: vm (kubernetes, slurm, ray are planned)"))
    if spec.max_restarts < 0:
        add(Problem("max_restarts", "cannot be negative"))
    return out


def spec_from_dict(data: Any) -> pb.JobSpec:
    """Validate a parsed YAML/JSON document; raise InvalidInputError with one Problem per problem."""
    if not isinstance(data, dict):
        raise InvalidInputError(Problem("", "a job spec is a mapping with at least name and command"))
    try:
        spec = JobSpecInput.model_validate(data).to_proto()
    except ValidationError as err:
        raise InvalidInputError(_problems_from_pydantic(err)) from None
    problems = check_spec(spec)
    if problems:
        raise InvalidInputError(problems)
    return spec


def load_spec_file(path: str | Path) -> pb.JobSpec:
    """Read and validate a YAML job spec file. A relative ``working_dir`` is resolved against its folder."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise InvalidInputError(Problem("", f"cannot read {p}: {err.strerror}")) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise InvalidInputError(Problem("", f"{where}not valid YAML ({getattr(err, 'problem', err)})")) from None
    spec = spec_from_dict(data)
    if spec.working_dir and not Path(spec.working_dir).is_absolute():
        # like docker-compose: a relative working_dir is relative to the spec file's folder
        spec.working_dir = str((p.parent / spec.working_dir).resolve())
    return spec


def priority_value(spec: pb.JobSpec) -> int:
    return PRIORITY_CLASSES.get(spec.priority or "normal", PRIORITY_CLASSES["normal"])
