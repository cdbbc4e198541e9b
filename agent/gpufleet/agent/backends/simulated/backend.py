"""SimulatedBackend: GPUs from the catalog, behaving like NVML reports them. See backends/base.py.

- Topology: a list of ``(model, count[, mig])``, e.g. from ``simulate:H100-80GB:8,A100-80GB:2:mig``.
- UUIDs are derived from the node name and index (``GPU-...``) and, for MIG devices, from the slice
  (``MIG-...``), so they survive agent restarts.
- MIG: the real profile table and placement rules (gpu_models); mode changes stay pending until
  :meth:`reset_gpu`; the layout is persisted in ``<state_dir>/simulated-gpus.json``.
- Per-process memory and busy-ness come from files in the sim dir (see simfiles.py); a process that is
  stopped (SIGSTOP, e.g. by the time-slicer) is not busy.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from gpufleet.agent.backends.base import GpuDevice, GpuSample, HealthEvent, MigDevice, ProcessUsage
from gpufleet.agent.backends.mig_plan import plan_relayout
from gpufleet.agent.backends.simulated.simfiles import SIM_DIR_ENV, SimUse, UseReader
from gpufleet.common.errors import (
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    Problem,
    UnsupportedOperationError,
)
from gpufleet.common.gpu_models import MODELS, GpuModel, PlacedInstance, get_model

STATE_FILE = "simulated-gpus.json"
IDLE_POWER_MW = 60_000
BUSY_POWER_MW_PER_PCT = 4_000


def fake_uuid(prefix: str, *parts: object) -> str:
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()
    return f"{prefix}-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def parse_topology(text: str) -> list[tuple[str, int, bool]]:
    """``"H100-80GB:8,A100-80GB:2:mig"`` -> ``[("H100-80GB", 8, False), ("A100-80GB", 2, True)]``.

    A ``:mig`` suffix starts that group's GPUs with MIG mode enabled (and no instances yet), as an operator
    would have set it up; bad text raises InvalidInputError naming ``--simulate``.
    """
    valid = "--simulate MODEL:COUNT[:mig][,MODEL:COUNT[:mig]...], e.g. --simulate H100-80GB:8,A100-80GB:2:mig"
    out: list[tuple[str, int, bool]] = []
    for part in (p.strip() for p in text.split(",")):
        model, _, rest = part.partition(":")
        count, _, flag = rest.partition(":")
        if model not in MODELS:
            raise InvalidInputError(
                Problem("--simulate", f"unknown GPU model {model!r} in {text!r}; known: {', '.join(sorted(MODELS))}")
            )
        if not count.isdigit() or int(count) < 1:
            raise InvalidInputError(Problem("--simulate", f"bad count in {part!r}; use {valid}"))
        if flag not in ("", "mig"):
            raise InvalidInputError(Problem("--simulate", f"unknown option {flag!r} in {part!r}; use {valid}"))
        if flag and not MODELS[model].mig_capable:
            raise InvalidInputError(
                Problem("--simulate", f"{model} is not MIG-capable; drop ':mig' from {part!r} ({valid})")
            )
        out.append((model, int(count), flag == "mig"))
    return out


@dataclass(slots=True)
class _SimInstance:
    profile: str
    start: int
    gi_id: int
    ci_id: int = 0


@dataclass(slots=True)
class _SimGpu:
    index: int
    model: GpuModel
    uuid: str
    mig_enabled: bool = False
    mig_pending: bool = False
    instances: list[_SimInstance] = field(default_factory=list)
    health_reason: str = ""


class SimulatedBackend:
    """See the module docstring."""

    name = "simulated"

    def __init__(
        self,
        topology: Sequence[tuple[str, int] | tuple[str, int, bool]],
        state_dir: Path,
        *,
        node_name: str = "sim-node",
        sim_dir: Path | None = None,
    ) -> None:
        self.node_name = node_name
        self.state_dir = state_dir
        env_dir = os.environ.get(SIM_DIR_ENV, "")
        self.sim_dir = sim_dir or (Path(env_dir) if env_dir else state_dir / "sim")
        self.sim_dir.mkdir(parents=True, exist_ok=True)
        self._reader = UseReader(self.sim_dir)
        self._events: list[HealthEvent] = []
        self._gpus: list[_SimGpu] = []
        for group in topology:
            model_name, count = group[0], group[1]
            mig = len(group) > 2 and bool(group[2])
            model = get_model(model_name)
            for _ in range(count):
                i = len(self._gpus)
                gpu = _SimGpu(i, model, fake_uuid("GPU", node_name, i, model.name), mig_enabled=mig, mig_pending=mig)
                self._gpus.append(gpu)
        self._load()  # what was persisted (MIG mode and layout) wins over the topology's starting point

    # ------------------------------------------------------------------ persistence

    def _state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def _load(self) -> None:
        try:
            data = json.loads(self._state_path().read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return
        for entry in data.get("gpus", []):
            i = entry.get("index", -1)
            if not 0 <= i < len(self._gpus) or entry.get("model") != self._gpus[i].model.name:
                continue  # topology changed: that GPU starts fresh
            gpu = self._gpus[i]
            gpu.mig_enabled = bool(entry.get("mig_enabled", False))
            gpu.mig_pending = bool(entry.get("mig_pending", gpu.mig_enabled))
            gpu.instances = [
                _SimInstance(str(x["profile"]), int(x["start"]), int(x["gi_id"]), int(x.get("ci_id", 0)))
                for x in entry.get("instances", [])
            ]

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = {
            "gpus": [
                {
                    "index": g.index,
                    "model": g.model.name,
                    "mig_enabled": g.mig_enabled,
                    "mig_pending": g.mig_pending,
                    "instances": [
                        {"profile": x.profile, "start": x.start, "gi_id": x.gi_id, "ci_id": x.ci_id}
                        for x in g.instances
                    ],
                }
                for g in self._gpus
            ]
        }
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self._state_path())

    # ------------------------------------------------------------------ helpers

    def _gpu(self, index: int) -> _SimGpu:
        if not 0 <= index < len(self._gpus):
            raise NotFoundError(f"no GPU with index {index} (this node has {len(self._gpus)})")
        return self._gpus[index]

    def _mig_uuid(self, gpu: _SimGpu, inst: _SimInstance) -> str:
        return fake_uuid("MIG", self.node_name, gpu.index, inst.profile, inst.start)

    def _mig_devices(self, gpu: _SimGpu) -> tuple[MigDevice, ...]:
        out = []
        for x in sorted(gpu.instances, key=lambda x: x.start):
            p = gpu.model.profile(x.profile)
            out.append(
                MigDevice(x.gi_id, x.ci_id, x.profile, x.start, p.memory_slices, self._mig_uuid(gpu, x), p.memory_mib)
            )
        return tuple(out)

    def _resolve(self, gpu_ref: str) -> tuple[int, str] | None:
        """A sim file's ``gpu`` value -> (GPU index, MIG uuid or "")."""
        ref = gpu_ref.strip() or "0"
        if ref.isdigit():
            i = int(ref)
            return (i, "") if i < len(self._gpus) else None
        for g in self._gpus:
            if g.uuid == ref:
                return g.index, ""
            if ref.startswith("MIG-") and g.mig_enabled:
                for d in self._mig_devices(g):
                    if d.uuid == ref:
                        return g.index, d.uuid
        return None

    @staticmethod
    def _state(pid: int) -> str:
        try:
            return psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            return psutil.STATUS_DEAD
        except psutil.AccessDenied:
            return psutil.STATUS_RUNNING

    # ------------------------------------------------------------------ GpuBackend

    def inventory(self) -> list[GpuDevice]:
        return [
            GpuDevice(
                index=g.index,
                uuid=g.uuid,
                model=g.model.name,
                product_name=g.model.product_names[0],
                memory_mib=g.model.memory_mib,
                mig_capable=g.model.mig_capable,
                mig_enabled=g.mig_enabled,
                mig_enabled_pending=g.mig_pending,
                mig_devices=self._mig_devices(g) if g.mig_enabled else (),
                numa_node=0 if g.index < max(1, len(self._gpus) // 2) else 1,
                nvlink_peers=tuple(o.index for o in self._gpus if o.index != g.index and o.model is g.model)
                if g.model.mig_capable
                else (),
                mps_available=False,
                healthy=not g.health_reason,
                health_reason=g.health_reason,
            )
            for g in self._gpus
        ]

    def sample(self) -> list[GpuSample]:
        per_gpu: dict[int, list[tuple[SimUse, str, bool]]] = {g.index: [] for g in self._gpus}
        for use in self._reader.read():
            state = self._state(use.pid)
            if state in (psutil.STATUS_DEAD, psutil.STATUS_ZOMBIE):
                self._reader.forget(use.pid)
                continue
            where = self._resolve(use.gpu)
            if where is None:
                continue
            running = state not in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
            per_gpu[where[0]].append((use, where[1], use.busy and running))
        out = []
        for g in self._gpus:
            uses = per_gpu[g.index]
            n_busy = sum(1 for _, _, b in uses if b)
            util = 100 if n_busy else 0
            procs = tuple(ProcessUsage(u.pid, u.mib, (100 // n_busy) if busy else 0, mig) for u, mig, busy in uses)
            used = min(sum(u.mib for u, _, _ in uses), g.model.memory_mib)
            out.append(
                GpuSample(
                    index=g.index,
                    uuid=g.uuid,
                    utilization_pct=util,
                    memory_utilization_pct=util * 6 // 10,
                    memory_used_mib=used,
                    memory_total_mib=g.model.memory_mib,
                    temperature_c=32 + util * 45 // 100,
                    power_mw=IDLE_POWER_MW + util * BUSY_POWER_MW_PER_PCT,
                    ecc_errors=0,
                    processes=procs,
                    healthy=not g.health_reason,
                    health_reason=g.health_reason,
                )
            )
        return out

    def health_events(self) -> list[HealthEvent]:
        events, self._events = self._events, []
        return events

    def inject_xid(self, index: int, xid: int, reason: str = "") -> None:
        """Simulate a critical XID on a GPU: it is reported unhealthy from now on (tests, demos)."""
        gpu = self._gpu(index)
        gpu.health_reason = reason or f"XID {xid}"
        self._events.append(HealthEvent(index, gpu.uuid, gpu.health_reason, xid))

    def apply_mig_layout(self, index: int, profiles: Sequence[str], keep_uuids: Sequence[str] = ()) -> list[MigDevice]:
        gpu = self._gpu(index)
        if not gpu.model.mig_capable:
            raise UnsupportedOperationError(f"GPU {index} ({gpu.model.name}) is not MIG-capable")
        if not gpu.mig_enabled:
            pending = " (enabling is pending a GPU reset)" if gpu.mig_pending else ""
            raise FailedPreconditionError(f"MIG mode is disabled on GPU {index}{pending}; enable it first")
        by_uuid = {self._mig_uuid(gpu, x): x for x in gpu.instances}
        missing = [u for u in keep_uuids if u not in by_uuid]
        if missing:
            raise InvalidInputError(Problem("keep_uuids", f"no MIG device {', '.join(missing)} on GPU {index}"))
        placed = {id(x): PlacedInstance(gpu.model.profile(x.profile), x.start) for x in gpu.instances}
        current = list(placed.values())
        must = [placed[id(by_uuid[u])] for u in keep_uuids]
        keep, create = plan_relayout(gpu.model, current, must, list(profiles))
        kept = [x for x in gpu.instances if placed[id(x)] in keep]
        used_ids = {x.gi_id for x in kept}
        new: list[_SimInstance] = []
        for p in create:
            gi = next(i for i in range(1, 64) if i not in used_ids)
            used_ids.add(gi)
            new.append(_SimInstance(p.profile.name, p.start, gi))
        gpu.instances = sorted([*kept, *new], key=lambda x: x.start)
        self._save()
        return list(self._mig_devices(gpu))

    def set_mig_mode(self, index: int, enabled: bool) -> None:
        gpu = self._gpu(index)
        if not gpu.model.mig_capable:
            raise UnsupportedOperationError(f"GPU {index} ({gpu.model.name}) is not MIG-capable")
        gpu.mig_pending = enabled
        self._save()

    def reset_gpu(self, index: int) -> None:
        """Apply a pending MIG mode (as a GPU reset does); refuses while a process uses the GPU."""
        gpu = self._gpu(index)
        users = [p.pid for s in self.sample() if s.index == index for p in s.processes]
        if users:
            raise FailedPreconditionError(f"GPU {index} is in use by pid(s) {users}; cannot reset it")
        if gpu.mig_enabled != gpu.mig_pending:
            gpu.mig_enabled = gpu.mig_pending
            gpu.instances = []
        gpu.health_reason = ""
        self._save()

    def job_env(self) -> dict[str, str]:
        return {SIM_DIR_ENV: str(self.sim_dir)}

    def close(self) -> None:
        return None
