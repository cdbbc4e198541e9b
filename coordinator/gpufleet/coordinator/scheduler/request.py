"""A pending job reduced to the integers the plugins compare: :class:`Request`.

Built once per job per cycle from ``pb.Job``; invalid specs become an ERROR result with a reason naming the
field instead of an exception escaping the cycle.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from gpufleet.common.errors import InvalidInputError, Problem
from gpufleet.proto.v1 import types_pb2 as pb

MILLI = 1000
NO_DEADLINE = 1 << 62  # sorts after every real deadline
_CACHE_IDS: dict[tuple[object, ...], int] = {}
_CACHE_IDS_MAX = 1 << 20
_CACHE_ID_SEQ = itertools.count(1)

KIND_CPU = "cpu"
KIND_FRACTION = "fraction"
KIND_WHOLE = "whole"
KIND_MIG = "mig"


@dataclass(frozen=True, slots=True)
class Request:
    job_id: str
    team: str
    kind: str
    milli_per_gpu: int  # 1..999 fraction, 1000 whole, 0 cpu-only / MIG
    gpus: int  # GPUs per member (1 for a fraction or a MIG slice)
    mem_mib: int  # GPU memory per GPU; 0 = the fraction of the device (whole device for whole GPUs)
    models: tuple[str, ...]
    mig_profile: str
    cpu_milli: int
    memory_mib: int
    nodes: int  # gang members (1 = not a gang)
    priority: int
    preemptible: bool
    deadline_ms: int
    max_runtime_s: int
    created_ms: int
    providers: tuple[str, ...]
    regions: tuple[str, ...]
    spot: int  # pb.SpotPolicy
    max_price_micros: int
    spread: bool
    # requests with the same key get the same answer from the filters in one cycle (with the team: the
    # scheduler's key for answers it remembers within a cycle; cache_id numbers the distinct cache keys, a
    # cheaper dict key than the nested tuple, which Python re-hashes on every lookup)
    shape_key: tuple[object, ...] = field(init=False, repr=False, compare=False)
    cache_key: tuple[object, ...] = field(init=False, repr=False, compare=False)
    cache_id: int = field(init=False, repr=False, compare=False)
    # a team's own queue order: earliest deadline (none: last), then arrival, then id (queue.py)
    own_key: tuple[int, int, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = (
            self.kind,
            self.milli_per_gpu,
            self.gpus,
            self.mem_mib,
            self.models,
            self.mig_profile,
            self.cpu_milli,
            self.memory_mib,
            self.nodes,
            self.providers,
            self.regions,
            self.spot,
            self.max_price_micros,
        )
        object.__setattr__(self, "shape_key", shape)
        key = (shape, self.team)
        object.__setattr__(self, "cache_key", key)
        cache_id = _CACHE_IDS.get(key)
        if cache_id is None:
            if len(_CACHE_IDS) >= _CACHE_IDS_MAX:
                _CACHE_IDS.clear()  # ids are never reused: a key seen again just gets a new one
            cache_id = _CACHE_IDS[key] = next(_CACHE_ID_SEQ)
        object.__setattr__(self, "cache_id", cache_id)
        object.__setattr__(self, "own_key", (self.deadline_ms or NO_DEADLINE, self.created_ms, self.job_id))

    @property
    def total_milli(self) -> int:
        """milli-GPU held by the whole job (all members). A MIG slice counts its compute share of 7."""
        return self.milli_per_gpu * self.gpus * self.nodes

    def describe(self) -> str:
        where = f" in {'/'.join(self.regions)}" if self.regions else ""
        model = "|".join(self.models) if self.models else "any GPU"
        if self.kind == KIND_MIG:
            what = f"1x MIG {self.mig_profile}" + (f" ({model})" if self.models else "")
        elif self.kind == KIND_FRACTION:
            mem = f", {self.mem_mib} MiB" if self.mem_mib else ""
            what = f"{self.milli_per_gpu / MILLI:.2f} of one {model}{mem}"
        elif self.kind == KIND_WHOLE:
            what = f"{self.gpus}x {model} on one node"
        else:
            what = f"{self.cpu_milli}m CPU, {self.memory_mib} MiB"
        if self.nodes > 1:
            what = f"{self.nodes} nodes each with {what.removesuffix(' on one node')}, all in one region"
        return f"needs {what}{where}"


def request_from_job(job: pb.Job) -> Request:
    """Normalize a job; raises InvalidInputError naming the field when the spec cannot be scheduled."""
    spec = job.spec
    r = spec.resources
    problems: list[Problem] = []
    milli = int(r.gpu_milli)
    if milli < 0:
        problems.append(Problem("spec.resources.gpu_milli", f"{milli} is negative; use 0..999 or a multiple of 1000"))
    if r.mig_profile:
        kind, per, gpus = KIND_MIG, 0, 1
        if milli not in (0, 1000):
            problems.append(Problem("spec.resources.gpu_milli", "must be 0 (or 1000) with mig_profile"))
    elif milli == 0:
        kind, per, gpus = KIND_CPU, 0, 0
    elif milli < MILLI:
        kind, per, gpus = KIND_FRACTION, milli, 1
    else:
        if milli % MILLI:
            problems.append(
                Problem("spec.resources.gpu_milli", f"{milli} is neither a fraction (<1000) nor whole GPUs")
            )
        kind, per, gpus = KIND_WHOLE, MILLI, milli // MILLI
    for name in ("gpu_memory_mib", "cpu_milli", "memory_mib"):
        if getattr(r, name) < 0:
            problems.append(Problem(f"spec.resources.{name}", "must be >= 0"))
    if spec.nodes < 0:
        problems.append(Problem("spec.nodes", "must be >= 1"))
    if problems:
        raise InvalidInputError(problems)
    p = spec.placement
    return Request(
        job_id=job.id,
        team=spec.team,
        kind=kind,
        milli_per_gpu=per,
        gpus=gpus,
        mem_mib=int(r.gpu_memory_mib),
        models=tuple(sorted(set(r.gpu_models))),
        mig_profile=r.mig_profile,
        cpu_milli=int(r.cpu_milli),
        memory_mib=int(r.memory_mib),
        nodes=max(1, int(spec.nodes)),
        priority=int(job.priority_value),
        preemptible=bool(spec.preemptible),
        deadline_ms=int(spec.deadline_ms),
        max_runtime_s=int(spec.max_runtime_s),
        created_ms=int(job.created_ms),
        providers=tuple(sorted(set(p.providers))),
        regions=tuple(sorted(set(p.regions))),
        spot=int(p.spot),
        max_price_micros=int(p.max_price_micros_per_gpu_hour),
        spread=bool(p.spread),
    )
