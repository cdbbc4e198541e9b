"""Load and validate the simulator's inputs: cluster.json and jobs.jsonl.

Every problem is reported as :class:`TraceError` naming the file, the line (for jobs.jsonl) and the field, so
``gpufleet sim`` can exit 2 with a message a user can fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpufleet.common import gpu_models
from gpufleet.common.errors import InvalidInputError
from gpufleet.common.jobspec import PRIORITY_CLASSES
from gpufleet.coordinator.scheduler.sim.build import make_job, make_node
from gpufleet.proto.v1 import types_pb2 as pb


class TraceError(ValueError):
    """Bad simulator input; the message names the file, line and field."""


@dataclass(frozen=True, slots=True)
class SimJob:
    id: str
    submit_s: float
    duration_s: float | None
    job: pb.Job


def _int(where: str, obj: dict[str, Any], key: str, default: int | None = None, minimum: int = 0) -> int:
    if key not in obj or obj[key] is None:
        if default is None:
            raise TraceError(f"{where}: missing field {key!r}")
        return default
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v) or v < minimum:
        raise TraceError(f"{where}: field {key!r} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def load_cluster(path: Path) -> list[pb.Node]:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise TraceError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or not data["nodes"]:
        raise TraceError(f'{path}: expected {{"nodes": [...]}} with at least one node')
    nodes: list[pb.Node] = []
    seen: set[str] = set()
    for k, obj in enumerate(data["nodes"]):
        where = f"{path}: nodes[{k}]"
        if not isinstance(obj, dict):
            raise TraceError(f"{where}: expected an object")
        name = obj.get("name")
        if not isinstance(name, str) or not name:
            raise TraceError(f"{where}: field 'name' must be a non-empty string")
        if name in seen:
            raise TraceError(f"{where}: duplicate node name {name!r}")
        seen.add(name)
        gpus = _int(where, obj, "gpus", 0)
        model = obj.get("gpu_model") or ""
        if gpus and (not isinstance(model, str) or not model):
            raise TraceError(f"{where}: field 'gpu_model' is required when gpus > 0")
        layouts = obj.get("mig_layouts") or []
        if not isinstance(layouts, list) or not all(isinstance(x, list) for x in layouts) or len(layouts) > gpus:
            raise TraceError(f"{where}: field 'mig_layouts' must be a list of at most {gpus} profile lists")
        if layouts:
            gm = gpu_models.MODELS.get(model)
            if gm is None or not gm.mig_capable:
                raise TraceError(f"{where}: field 'mig_layouts': {model} is not a MIG-capable model")
            for layout in layouts:
                try:
                    gpu_models.plan_layout(gm, layout)
                except InvalidInputError as e:
                    raise TraceError(f"{where}: field 'mig_layouts': {e}") from None
        nodes.append(
            make_node(
                name,
                model or "none",
                gpus,
                _int(where, obj, "cpu_milli"),
                _int(where, obj, "memory_mib"),
                gpu_memory_mib=_int(where, obj, "gpu_memory_mib", 0),
                region=str(obj.get("region") or "sim-1"),
                zone=str(obj.get("zone") or obj.get("region") or "sim-1a"),
                provider=str(obj.get("provider") or "sim"),
                mig_layouts=layouts,
            )
        )
    return nodes


def parse_job(where: str, obj: Any) -> SimJob:
    if not isinstance(obj, dict):
        raise TraceError(f"{where}: expected a JSON object")
    jid = obj.get("id")
    if not isinstance(jid, str | int) or jid == "":
        raise TraceError(f"{where}: field 'id' must be a non-empty string")
    submit = obj.get("submit_s")
    if isinstance(submit, bool) or not isinstance(submit, int | float) or submit < 0:
        raise TraceError(f"{where}: field 'submit_s' must be a number >= 0, got {submit!r}")
    duration = obj.get("duration_s")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0):
        raise TraceError(f"{where}: field 'duration_s' must be a number >= 0 or null, got {duration!r}")
    gpus = obj.get("gpus", 0)
    if isinstance(gpus, bool) or not isinstance(gpus, int | float) or gpus < 0 or (gpus > 1 and gpus != int(gpus)):
        raise TraceError(f"{where}: field 'gpus' must be 0, a fraction below 1 or a whole count, got {gpus!r}")
    model = obj.get("gpu_model")
    if model is not None and not isinstance(model, str):
        raise TraceError(f"{where}: field 'gpu_model' must be a string (alternatives joined by '|') or null")
    prio = obj.get("priority")
    if prio is not None and not (isinstance(prio, int) and not isinstance(prio, bool)) and prio not in PRIORITY_CLASSES:
        raise TraceError(f"{where}: field 'priority' must be an integer or one of {', '.join(PRIORITY_CLASSES)}")
    mig = obj.get("mig_profile") or ""
    if mig and mig not in gpu_models.all_mig_profile_names():
        raise TraceError(f"{where}: field 'mig_profile': unknown profile {mig!r}")
    team = obj.get("team") or ""
    if not isinstance(team, str):
        raise TraceError(f"{where}: field 'team' must be a string")
    deadline = obj.get("deadline_s")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int | float)):
        raise TraceError(f"{where}: field 'deadline_s' must be a number or null")
    job = make_job(
        str(jid),
        0 if mig else float(gpus),
        _int(where, obj, "cpu_milli", 0),
        _int(where, obj, "memory_mib", 0),
        model,
        mig_profile=mig,
        nodes=_int(where, obj, "nodes", 1, minimum=1),
        team=team,
        priority=prio,
        preemptible=bool(obj.get("preemptible", False)),
        deadline_ms=int(deadline * 1000) if deadline is not None else 0,
        max_runtime_s=int(duration) if duration is not None and deadline is not None else 0,
        created_ms=int(submit * 1000),
    )
    return SimJob(str(jid), float(submit), None if duration is None else float(duration), job)


def load_jobs(path: Path) -> list[SimJob]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror}") from None
    jobs: list[SimJob] = []
    seen: set[str] = set()
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}: line {no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TraceError(f"{where}: invalid JSON: {e.msg}") from None
        sj = parse_job(where, obj)
        if sj.id in seen:
            raise TraceError(f"{where}: duplicate job id {sj.id!r}")
        seen.add(sj.id)
        jobs.append(sj)
    if not jobs:
        raise TraceError(f"{path}: no jobs")
    return jobs
