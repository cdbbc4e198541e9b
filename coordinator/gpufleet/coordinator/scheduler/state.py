"""ClusterState: the scheduler's incremental view of free capacity, kept in numpy arrays.

Rows are node slots, columns GPU positions on the node (padded; ``g_valid`` masks real GPUs). Every change is
local: ``upsert_node`` rewrites one row, ``bind``/``unbind`` adjust the rows a job touches, so a cycle never
rebuilds a snapshot. Plugins read the arrays directly as vectors over all nodes/GPUs.

In-cycle reservations go through :meth:`reserve` and are undone by :meth:`rollback`, which is how
``Scheduler.schedule`` stays pure: the state is exactly as it was when the plan comes back; the coordinator
binds what it commits.
"""

from __future__ import annotations

import array
import bisect
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gpufleet.common import gpu_models, node_labels
from gpufleet.common.errors import InvalidInputError
from gpufleet.coordinator.scheduler.mix import THRESHOLDS, WorkloadMix
from gpufleet.coordinator.scheduler.request import MILLI, Request, request_from_job
from gpufleet.proto.v1 import types_pb2 as pb

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
B = npt.NDArray[np.bool_]


@dataclass(slots=True)
class MigSlot:
    profile: str
    uuid: str
    gi_id: int
    start: int
    size: int
    memory_mib: int
    used: bool


@dataclass(frozen=True, slots=True)
class DeviceUse:
    col: int  # GPU column on the node
    milli: int
    mib: int
    mig_uuid: str = ""


@dataclass(frozen=True, slots=True)
class Alloc:
    node: str
    devices: tuple[DeviceUse, ...]
    cpu_milli: int
    memory_mib: int


@dataclass(slots=True)
class BoundJob:
    job: pb.Job
    allocs: list[Alloc]
    team: str
    milli: int
    model_milli: dict[str, int] = field(default_factory=dict)
    mix_key: tuple[int, int, int] | None = None  # (milli_per_gpu, gpus, cpu) added to the mix


UNKNOWN_PRICE = np.iinfo(np.int64).max // 4  # a malformed price label: above every price ceiling


def _price_micros(labels: Mapping[str, str]) -> int:
    """Price per GPU-hour for the scheduler: an unlabeled node is owned hardware (0)."""
    price = node_labels.price_micros(labels)
    if price is None:
        return 0
    return int(UNKNOWN_PRICE) if price < 0 else price


@dataclass(frozen=True, slots=True)
class _UndoAlloc:
    alloc: Alloc
    team: str
    model_milli: dict[str, int]


@dataclass(frozen=True, slots=True)
class _UndoRelease:
    bound: BoundJob


@dataclass(frozen=True, slots=True)
class _UndoBlock:
    i: int
    col: int


class _Interner:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.ids: dict[str, int] = {}
        self._luts: dict[tuple[tuple[str, ...], int], B] = {}

    def lookup(self, names: tuple[str, ...]) -> B:
        """A boolean vector over ids, True for ``names``, with one more False entry at the end so that the
        padding id -1 maps to False: ``lookup(names)[ids]`` is ``np.isin(ids, ...)`` without its sort."""
        key = (names, len(self.names))
        lut = self._luts.get(key)
        if lut is None:
            if len(self._luts) >= 1024:
                self._luts.clear()
            lut = np.zeros(len(self.names) + 1, dtype=np.bool_)
            for name in names:
                i = self.ids.get(name)
                if i is not None:
                    lut[i] = True
            lut.flags.writeable = False
            self._luts[key] = lut
        return lut

    def id(self, name: str) -> int:
        i = self.ids.get(name)
        if i is None:
            i = self.ids[name] = len(self.names)
            self.names.append(name)
        return i


_UIDS = itertools.count(1)
MigLayout = tuple[str, tuple[tuple[str, int, bool], ...]]
_LAYOUT_IDS: dict[MigLayout, int] = {}
_LAYOUT_IDS_MAX = 65_536
_LAYOUT_ID_SEQ = itertools.count(1)
CHANGE_LOG_MAX = 1 << 16

# sorted free-milli row -> its sigma row; rows repeat a lot across nodes and reservations (bounded memo)
_SIGMA_ROWS: dict[tuple[int, ...], I64] = {}
_SIGMA_ROWS_MAX = 65_536


def _sigma_row(srt: tuple[int, ...]) -> I64:
    """sigma[t] = sum of the (sorted) free values < THRESHOLDS[t]: prefix sums of the sorted row."""
    row = _SIGMA_ROWS.get(srt)
    if row is None:
        arr = np.array(srt, dtype=np.int64)
        prefix = np.concatenate(([0], np.cumsum(arr)))
        row = prefix[np.searchsorted(arr, THRESHOLDS, side="left")]
        row.flags.writeable = False
        if len(_SIGMA_ROWS) >= _SIGMA_ROWS_MAX:
            _SIGMA_ROWS.clear()
        _SIGMA_ROWS[srt] = row
    return row


class ClusterState:
    def __init__(self, node_capacity: int = 64, gpu_slots: int = 8) -> None:
        self.uid = next(_UIDS)  # identifies this state for caches that outlive a cycle
        self.n = 0  # high-water mark of node slots
        self._cap = 0
        self.G = gpu_slots
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.nodes: list[pb.Node | None] = []
        self.gpu_index: list[list[int]] = []  # node slot -> column -> Gpu.index
        self.gpu_uuid: list[list[str]] = []
        self.nvlink: list[list[frozenset[int]]] = []  # node slot -> column -> peer columns
        self.row_version: list[int] = []  # node slot -> the version its row last changed at
        # (node slot, column) -> (row version, layout id, (model, MIG slots as (profile, start, used)))
        self._mig_layouts: dict[tuple[int, int], tuple[int, int, MigLayout]] = {}
        # node slot -> (NUMA node per column, NVLink peers per column): what whole-GPU picks depend on
        self.topology: list[tuple[tuple[int, ...], tuple[frozenset[int], ...]]] = []
        self.mig_slots: list[list[list[MigSlot]]] = []
        self._free_slots: list[int] = []
        self.models = _Interner()
        self.regions = _Interner()  # "provider/region"
        self.zones = _Interner()  # "provider/region/zone"
        self.providers = _Interner()
        self.jobs: dict[str, BoundJob] = {}
        self.preemptible: set[str] = set()  # bound jobs with spec.preemptible (preemption candidates)
        self.node_jobs: dict[str, set[str]] = {}
        self.team_milli: dict[str, int] = {}
        self.team_model_milli: dict[tuple[str, str], int] = {}
        self.mix = WorkloadMix()
        self._prices: dict[int, int] = {}  # price per GPU-hour -> live nodes at it
        self.mig_free: dict[str, I64] = {}
        self.version = 0  # bumps on every change of a node row; plugins may cache per version
        self.nodes_version = 0  # bumps when a node joins, changes (upsert) or leaves: its static columns changed
        # the node slot of each version bump since version _log_base: what changed since a cache was synced
        self._log = array.array("q")
        self._log_base = 0
        self._undo: list[_UndoAlloc | _UndoRelease | _UndoBlock] | None = None
        self._alloc_arrays(node_capacity, gpu_slots)

    # ------------------------------------------------------------------ arrays
    def _alloc_arrays(self, cap: int, g: int) -> None:
        old = self._cap
        oldg = self.G if old else g

        def grow(a: npt.NDArray[np.generic] | None, shape: tuple[int, ...], fill: object) -> npt.NDArray[np.generic]:
            dtype = a.dtype if a is not None else np.int64
            out = np.full(shape, fill, dtype=dtype)
            if a is not None:
                if a.ndim == 1:
                    out[: a.shape[0]] = a
                else:
                    out[: a.shape[0], : a.shape[1]] = a
            return out

        def mk2(name: str, dtype: type, fill: object) -> None:
            a = getattr(self, name, None)
            if a is None:
                a = np.full((0, oldg), fill, dtype=dtype)
            setattr(self, name, grow(a, (cap, g), fill))

        def mk1(name: str, dtype: type, fill: object) -> None:
            a = getattr(self, name, None)
            if a is None:
                a = np.full((0,), fill, dtype=dtype)
            setattr(self, name, grow(a, (cap,), fill))

        mk2("g_valid", np.bool_, False)
        mk2("g_healthy", np.bool_, False)
        mk2("g_mig", np.bool_, False)
        mk2("g_blocked", np.bool_, False)  # held in this cycle (MIG re-layout target)
        mk2("g_usable", np.bool_, False)  # valid, healthy, not MIG-enabled: fractions and whole GPUs
        mk2("g_open", np.bool_, False)  # usable and not blocked: what GpuFit may hand out
        mk2("g_mig_ok", np.bool_, False)  # valid, healthy, MIG-enabled: where MIG slices may go
        mk2("g_model", np.int32, -1)
        mk2("g_numa", np.int32, 0)
        mk2("g_total_mib", np.int64, 0)
        mk2("g_free_milli", np.int64, 0)
        mk2("g_free_mib", np.int64, 0)
        mk1("n_alive", np.bool_, False)
        mk1("n_ready", np.bool_, False)
        mk1("n_spot", np.bool_, False)
        mk1("n_region", np.int32, -1)
        mk1("n_zone", np.int32, -1)
        mk1("n_provider", np.int32, -1)
        mk1("n_price", np.int64, -1)
        mk1("n_cpu", np.int64, 0)
        mk1("n_mem", np.int64, 0)
        mk1("n_free_cpu", np.int64, 0)
        mk1("n_free_mem", np.int64, 0)
        mk1("n_gpus", np.int64, 0)
        mk1("n_usable", np.int64, 0)  # healthy non-MIG GPUs
        mk1("n_free_whole", np.int64, 0)  # usable GPUs with nothing on them
        mk1("n_free_milli", np.int64, 0)  # sum of free milli on usable GPUs
        mk1("n_max_frac", np.int64, 0)  # largest free milli on one usable GPU
        mk1("n_model", np.int32, -1)  # the node's GPU model when uniform, else -2
        mk1("n_has_mig", np.bool_, False)  # the node has (or had) MIG-enabled GPUs
        sig = getattr(self, "n_sigma", None)
        cols = len(THRESHOLDS)
        new_sig = np.zeros((cap, cols), dtype=np.int64)
        if sig is not None:
            new_sig[: sig.shape[0]] = sig
        self.n_sigma: I64 = new_sig  # per threshold t: free milli on usable GPUs with free < t
        self._cap, self.G = cap, g
        for prof in list(getattr(self, "mig_free", {})):
            self.mig_free_array(prof)
        while len(self.names) < cap:
            self.names.append("")
            self.nodes.append(None)
            self.gpu_index.append([])
            self.gpu_uuid.append([])
            self.nvlink.append([])
            self.topology.append(((), ()))
            self.row_version.append(0)
            self.mig_slots.append([])

    # declared for mypy; set in _alloc_arrays
    g_valid: B
    g_healthy: B
    g_mig: B
    g_blocked: B
    g_usable: B
    g_open: B
    g_mig_ok: B
    g_model: I32
    g_numa: I32
    g_total_mib: I64
    g_free_milli: I64
    g_free_mib: I64
    n_alive: B
    n_ready: B
    n_spot: B
    n_region: I32
    n_zone: I32
    n_provider: I32
    n_price: I64
    n_cpu: I64
    n_mem: I64
    n_free_cpu: I64
    n_free_mem: I64
    n_gpus: I64
    n_usable: I64
    n_free_whole: I64
    n_free_milli: I64
    n_max_frac: I64
    n_model: I32
    n_has_mig: B

    def _refresh(self, i: int) -> None:
        # one row of at most a few GPUs: Python ints beat a dozen numpy calls on 8-element arrays
        free = [f if u else 0 for f, u in zip(self.g_free_milli[i].tolist(), self.g_usable[i].tolist(), strict=True)]
        blocked: list[bool] = self.g_blocked[i].tolist()
        if any(blocked):
            self.n_free_whole[i] = len([f for f, b in zip(free, blocked, strict=True) if f >= MILLI and not b])
            free.sort()
        else:
            free.sort()
            self.n_free_whole[i] = len(free) - bisect.bisect_left(free, MILLI)
        self.n_free_milli[i] = sum(free)
        self.n_max_frac[i] = free[-1] if free else 0
        self.n_sigma[i] = _sigma_row(tuple(free))
        if self.n_has_mig[i]:
            counts: dict[str, list[int]] = {}
            healthy: list[bool] = self.g_healthy[i].tolist()
            for c, slots in enumerate(self.mig_slots[i]):
                if not slots or blocked[c] or not healthy[c]:
                    continue
                for s in slots:
                    if not s.used:
                        row = counts.get(s.profile)
                        if row is None:
                            row = counts[s.profile] = [0] * self.G
                        row[c] += 1
            for profile in counts:
                self.mig_free_array(profile)  # created before the rows below are written
            for profile, arr in self.mig_free.items():
                arr[i] = counts.get(profile, 0)
        self._changed(i)

    def _changed(self, i: int) -> None:
        self.version += 1
        self.row_version[i] = self.version
        log = self._log
        if len(log) >= CHANGE_LOG_MAX:  # caches synced before this many changes re-read every node
            self._log_base += len(log)
            self._log = log = array.array("q")
        log.append(i)

    def changed_since(self, version: int) -> array.array[int] | None:
        """Node slots whose rows changed after ``version`` (in order, with repeats), or None when the log no
        longer reaches back that far (then any node may have changed)."""
        start = version - self._log_base
        if start < 0:
            return None
        return self._log[start:]  # a copy (``np.frombuffer`` reads it as int64)

    def mig_layout(self, i: int, col: int) -> tuple[int, MigLayout]:
        """GPU ``col`` of node slot ``i`` as (a small id, (model, its MIG slots as (profile, start, in use))):
        equal layouts have equal ids, so re-layout answers can be remembered by id (recomputed when the row
        changed)."""
        got = self._mig_layouts.get((i, col))
        version = self.row_version[i]
        if got is None or got[0] != version:
            layout = (
                self.models.names[int(self.g_model[i, col])],
                tuple((s.profile, s.start, s.used) for s in self.mig_slots[i][col]),
            )
            layout_id = _LAYOUT_IDS.get(layout)
            if layout_id is None:
                if len(_LAYOUT_IDS) >= _LAYOUT_IDS_MAX:
                    _LAYOUT_IDS.clear()  # ids are never reused: answers remembered by an old id stay right
                layout_id = _LAYOUT_IDS[layout] = next(_LAYOUT_ID_SEQ)
            got = self._mig_layouts[(i, col)] = (version, layout_id, layout)
        return got[1], got[2]

    def mig_free_array(self, profile: str) -> I64:
        """(cap, G) count of free MIG slices of ``profile`` per GPU (created on first use)."""
        arr = self.mig_free.get(profile)
        if arr is None or arr.shape != (self._cap, self.G):
            new = np.zeros((self._cap, self.G), dtype=np.int64)
            if arr is not None:
                new[: arr.shape[0], : arr.shape[1]] = arr
            arr = self.mig_free[profile] = new
        return arr

    # ------------------------------------------------------------------ nodes
    def upsert_node(self, node: pb.Node) -> None:
        self.nodes_version += 1
        inv = node.inventory
        name = inv.name
        i = self.index.get(name)
        if i is not None:
            self._count_price(int(self.n_price[i]), -1)  # re-counted below
        else:
            if self._free_slots:
                i = self._free_slots.pop()
            else:
                if self.n >= self._cap:
                    self._alloc_arrays(max(64, self._cap * 2), self.G)
                i = self.n
                self.n += 1
            self.index[name] = i
            self.names[i] = name
        if len(inv.gpus) > self.G:
            self._alloc_arrays(self._cap, len(inv.gpus))
        self.nodes[i] = node
        g = len(inv.gpus)
        for a in (self.g_valid, self.g_healthy, self.g_mig, self.g_blocked):
            a[i] = False
        self.g_model[i] = -1
        self.g_total_mib[i] = 0
        self.g_free_milli[i] = 0
        self.g_free_mib[i] = 0
        cols = list(range(g))
        self.gpu_index[i] = [int(gpu.index) for gpu in inv.gpus]
        self.gpu_uuid[i] = [gpu.uuid for gpu in inv.gpus]
        col_of = {int(gpu.index): c for c, gpu in enumerate(inv.gpus)}
        self.nvlink[i] = [frozenset(col_of[p] for p in gpu.nvlink_peers if p in col_of) for gpu in inv.gpus]
        self.mig_slots[i] = []
        models = set()
        for c, gpu in zip(cols, inv.gpus, strict=True):
            mid = self.models.id(gpu.model)
            models.add(mid)
            self.g_valid[i, c] = True
            self.g_healthy[i, c] = bool(gpu.healthy)
            self.g_mig[i, c] = gpu.mig_mode == pb.MIG_MODE_ENABLED
            self.g_model[i, c] = mid
            self.g_numa[i, c] = gpu.numa_node
            mem = int(gpu.memory_mib) or gpu_models.MODELS.get(gpu.model, gpu_models.MODELS["T4"]).memory_mib
            self.g_total_mib[i, c] = mem
            self.g_free_milli[i, c] = MILLI
            self.g_free_mib[i, c] = mem
            self.mig_slots[i].append(
                [
                    MigSlot(
                        m.profile, m.uuid, m.gi_id, m.placement_start, m.placement_size, m.memory_mib, bool(m.job_id)
                    )
                    for m in gpu.mig_instances
                ]
                if gpu.mig_mode == pb.MIG_MODE_ENABLED
                else []
            )
        self.topology[i] = (tuple(int(gpu.numa_node) for gpu in inv.gpus), tuple(self.nvlink[i]))
        self.n_has_mig[i] = bool(self.n_has_mig[i]) or bool(self.g_mig[i].any())
        self.g_usable[i] = self.g_valid[i] & self.g_healthy[i] & ~self.g_mig[i]
        self.g_open[i] = self.g_usable[i]  # nothing is blocked outside a cycle
        self.g_mig_ok[i] = self.g_valid[i] & self.g_healthy[i] & self.g_mig[i]
        self.n_usable[i] = int(np.count_nonzero(self.g_usable[i]))
        self.n_model[i] = next(iter(models)) if len(models) == 1 else (-1 if not models else -2)
        self.n_alive[i] = True
        self.n_ready[i] = node.state in (pb.NODE_STATE_READY, pb.NODE_STATE_UNSPECIFIED) and not node.cordoned
        self.n_spot[i] = bool(inv.spot)
        self.n_provider[i] = self.providers.id(inv.provider)
        self.n_region[i] = self.regions.id(f"{inv.provider}/{inv.region}")
        self.n_zone[i] = self.zones.id(f"{inv.provider}/{inv.region}/{inv.zone}")
        self.n_price[i] = price = _price_micros(inv.labels)
        self._count_price(price, +1)
        self.n_cpu[i] = self.n_free_cpu[i] = int(inv.cpu_milli)
        self.n_mem[i] = self.n_free_mem[i] = int(inv.memory_mib)
        self.n_gpus[i] = g
        for job_id in self.node_jobs.get(name, ()):
            for alloc in self.jobs[job_id].allocs:
                if alloc.node == name:
                    self._apply(alloc, +1)
        self._refresh(i)

    def remove_node(self, name: str) -> None:
        i = self.index.pop(name, None)
        if i is None:
            return
        self.nodes_version += 1
        self._count_price(int(self.n_price[i]), -1)
        self.names[i] = ""
        self.nodes[i] = None
        self.n_alive[i] = False
        self.n_ready[i] = False
        self.g_valid[i] = False
        self.g_usable[i] = False
        self.g_open[i] = False
        self.g_mig_ok[i] = False
        self.n_usable[i] = 0
        self.g_free_milli[i] = 0
        self.g_free_mib[i] = 0
        self.mig_slots[i] = []
        self._refresh(i)
        self._free_slots.append(i)

    def _count_price(self, price: int, sign: int) -> None:
        left = self._prices.get(price, 0) + sign
        if left > 0:
            self._prices[price] = left
        else:
            self._prices.pop(price, None)

    def prices_vary(self) -> bool:
        """Whether the live nodes do not all have the same price per GPU-hour."""
        return len(self._prices) > 1

    def node(self, name: str) -> pb.Node | None:
        i = self.index.get(name)
        return None if i is None else self.nodes[i]

    def live_nodes(self) -> Iterator[int]:
        return (int(i) for i in np.flatnonzero(self.n_alive[: self.n]))

    # ------------------------------------------------------------------ accounting
    def _apply(self, alloc: Alloc, sign: int, refresh: bool = True) -> int | None:
        """Add (sign +1) or remove an allocation on its node; returns the node slot (None: node gone).
        ``refresh=False`` leaves the node's derived columns to the caller's :meth:`_refresh`."""
        i = self.index.get(alloc.node)
        if i is None:
            return None
        gpus = int(self.n_gpus[i])
        devices = [d for d in alloc.devices if 0 <= d.col < gpus]  # not a GPU the node no longer reports
        if len(devices) > 2:  # several GPUs (whole-GPU jobs): one read and one write per row
            milli, mib = self.g_free_milli[i].tolist(), self.g_free_mib[i].tolist()
            for d in devices:
                milli[d.col] -= sign * d.milli
                mib[d.col] -= sign * d.mib
            self.g_free_milli[i] = milli
            self.g_free_mib[i] = mib
        else:
            for d in devices:
                self.g_free_milli[i, d.col] -= sign * d.milli
                self.g_free_mib[i, d.col] -= sign * d.mib
        for d in devices:
            if d.mig_uuid:
                for s in self.mig_slots[i][d.col]:
                    if s.uuid == d.mig_uuid:
                        s.used = sign > 0
        self.n_free_cpu[i] -= sign * alloc.cpu_milli
        self.n_free_mem[i] -= sign * alloc.memory_mib
        if refresh:
            self._refresh(i)
        return i

    def _usage(self, team: str, model_milli: dict[str, int], sign: int) -> None:
        for model, milli in model_milli.items():
            if not milli:
                continue
            left = self.team_milli.get(team, 0) + sign * milli
            if left:
                self.team_milli[team] = left
            else:
                self.team_milli.pop(team, None)
            key = (team, model)
            left = self.team_model_milli.get(key, 0) + sign * milli
            if left:
                self.team_model_milli[key] = left
            else:
                self.team_model_milli.pop(key, None)

    def allocs_from_assignments(self, job: pb.Job) -> tuple[list[Alloc], dict[str, int]]:
        """Translate stored assignments to column-level uses (and milli per GPU model for quotas)."""
        res = job.spec.resources
        allocs: list[Alloc] = []
        model_milli: dict[str, int] = {}
        for ta in job.assignments:
            i = self.index.get(ta.node)
            devs: list[DeviceUse] = []
            for d in ta.devices:
                col = int(d.gpu_index)
                model = ""
                total = 0
                if i is not None:
                    idx = self.gpu_index[i]
                    col = idx.index(d.gpu_index) if d.gpu_index in idx else int(d.gpu_index)
                    if col < len(idx):
                        model = self.models.names[int(self.g_model[i, col])]
                        total = int(self.g_total_mib[i, col])
                exclusive = d.mode == pb.SHARING_MODE_EXCLUSIVE
                milli = int(d.gpu_milli) or (MILLI if exclusive or not d.mig_device_uuid else 0)
                if d.mig_device_uuid and not d.gpu_milli:
                    milli = 0
                mib = int(d.gpu_memory_mib) or (total if exclusive else milli * total // MILLI)
                devs.append(DeviceUse(col, milli, mib, d.mig_device_uuid))
                model_milli[model] = model_milli.get(model, 0) + milli
            allocs.append(Alloc(ta.node, tuple(devs), int(res.cpu_milli), int(res.memory_mib)))
        return allocs, model_milli

    def bind(self, job: pb.Job) -> None:
        """Account a placed or running job (its ``assignments``). Binding again replaces the old account."""
        if job.id in self.jobs:
            self.unbind(job.id)
        allocs, model_milli = self.allocs_from_assignments(job)
        bound = BoundJob(job, allocs, job.spec.team, sum(model_milli.values()), model_milli)
        try:
            req: Request | None = request_from_job(job)
        except InvalidInputError:
            req = None
        if req is not None and req.kind in ("fraction", "whole", "cpu"):
            bound.mix_key = (req.milli_per_gpu, req.gpus, req.cpu_milli)
            self.mix.add(*bound.mix_key)
        self.jobs[job.id] = bound
        if job.spec.preemptible:
            self.preemptible.add(job.id)
        for a in allocs:
            self.node_jobs.setdefault(a.node, set()).add(job.id)
            self._apply(a, +1)
        self._usage(bound.team, model_milli, +1)

    def unbind(self, job_id: str) -> None:
        bound = self.jobs.pop(job_id, None)
        if bound is None:
            return
        self.preemptible.discard(job_id)
        for a in bound.allocs:
            self._apply(a, -1)
            s = self.node_jobs.get(a.node)
            if s is not None:
                s.discard(job_id)
                if not s:
                    del self.node_jobs[a.node]
        self._usage(bound.team, bound.model_milli, -1)
        if bound.mix_key is not None:
            self.mix.add(*bound.mix_key, sign=-1)

    # ------------------------------------------------------------------ in-cycle reservations
    def begin(self) -> None:
        self._undo = []

    def reserve(self, alloc: Alloc, team: str, model_milli: dict[str, int]) -> None:
        self._apply(alloc, +1)
        self._usage(team, model_milli, +1)
        if self._undo is not None:
            self._undo.append(_UndoAlloc(alloc, team, model_milli))

    def release(self, job_id: str) -> BoundJob | None:
        """Tentatively free a bound job's resources (a preemption victim) until rollback."""
        bound = self.jobs.get(job_id)
        if bound is None:
            return None
        for a in bound.allocs:
            self._apply(a, -1)
        self._usage(bound.team, bound.model_milli, -1)
        if self._undo is not None:
            self._undo.append(_UndoRelease(bound))
        return bound

    def mark(self) -> int:
        return len(self._undo) if self._undo is not None else 0

    def block_gpu(self, i: int, col: int) -> None:
        self.g_blocked[i, col] = True
        self.g_open[i, col] = False
        self._refresh(i)
        if self._undo is not None:
            self._undo.append(_UndoBlock(i, col))

    def rollback(self, to_mark: int | None = None) -> None:
        """Undo in-cycle changes back to ``to_mark`` (None: all of them, and end the cycle)."""
        undo = self._undo or []
        start = 0 if to_mark is None else to_mark
        tail = undo[start:]
        del undo[start:]
        if to_mark is None:
            self._undo = None
        # derived columns are a function of the row alone: recompute each touched node once at the end
        touched: set[int] = set()
        for u in reversed(tail):
            if isinstance(u, _UndoRelease):
                for a in u.bound.allocs:
                    i = self._apply(a, +1, refresh=False)
                    if i is not None:
                        touched.add(i)
                self._usage(u.bound.team, u.bound.model_milli, +1)
            elif isinstance(u, _UndoAlloc):
                i = self._apply(u.alloc, -1, refresh=False)
                if i is not None:
                    touched.add(i)
                self._usage(u.team, u.model_milli, -1)
            else:
                self.g_blocked[u.i, u.col] = False
                self.g_open[u.i, u.col] = self.g_usable[u.i, u.col]
                touched.add(u.i)
        for i in sorted(touched):
            self._refresh(i)

    # ------------------------------------------------------------------ compact views
    # the rows filters and scores read (gangs and per-model quotas never use compact views)
    _ROW_ARRAYS = (
        "g_valid", "g_usable", "g_open", "g_mig_ok", "g_healthy", "g_mig", "g_blocked", "g_model", "g_total_mib",
        "g_free_milli", "g_free_mib", "n_alive", "n_ready", "n_spot", "n_region", "n_provider", "n_price", "n_cpu",
        "n_free_cpu", "n_free_mem", "n_usable", "n_free_whole", "n_free_milli", "n_sigma",
    )  # fmt: skip

    def rows(self, idx: I64) -> ClusterState:
        """A read-only view of the rows ``idx`` (node slots renumbered 0..len-1) for filtering and scoring a few
        nodes without touching fleet-sized arrays; each array is indexed on first use (a contiguous ``idx``
        gives slices, no copies). Interners and team usage are shared."""
        return _Rows(self, idx)

    def sigma_at(self, rows: I64 | slice, columns: I64) -> I64:
        """``n_sigma`` at node slots ``rows`` (an index array or a slice) and threshold ``columns``."""
        out: I64 = self.n_sigma[rows][:, columns] if isinstance(rows, slice) else self.n_sigma[rows[:, None], columns]
        return out

    # ------------------------------------------------------------------ summaries
    def capacity_milli(self) -> int:
        m = self.n_alive[: self.n]
        return int(self.n_gpus[: self.n][m].sum()) * MILLI

    def allocated_milli(self) -> int:
        n = self.n
        valid = self.g_valid[:n]
        return int((MILLI - self.g_free_milli[:n])[valid].sum())


_ROW_ARRAY_NAMES = frozenset(ClusterState._ROW_ARRAYS)


class _Rows(ClusterState):
    """:meth:`ClusterState.rows`: the parent's row arrays indexed by ``idx`` lazily, on first attribute use."""

    def __init__(self, parent: ClusterState, idx: I64) -> None:  # no super().__init__: a view, not a state
        n = len(idx)
        lo = int(idx[0]) if n else 0
        self._parent = parent
        self._sel: I64 | slice = slice(lo, lo + n) if n and int(idx[-1]) - lo + 1 == n else idx
        self.n = n
        self._cap = n
        self.G = parent.G
        self.models, self.regions, self.zones, self.providers = (
            parent.models,
            parent.regions,
            parent.zones,
            parent.providers,
        )
        self.team_milli, self.team_model_milli = parent.team_milli, parent.team_model_milli
        self._prices = parent._prices
        self.mig_free = {}

    def __getattr__(self, name: str) -> npt.NDArray[np.generic]:
        if name not in _ROW_ARRAY_NAMES:
            raise AttributeError(name)
        arr: npt.NDArray[np.generic] = getattr(self._parent, name)[self._sel]
        setattr(self, name, arr)
        return arr

    def sigma_at(self, rows: I64 | slice, columns: I64) -> I64:
        sel = self._sel
        if isinstance(sel, slice):  # contiguous parent rows: shift
            lo = sel.start
            prow = slice(rows.start + lo, rows.stop + lo) if isinstance(rows, slice) else rows + lo
            return self._parent.sigma_at(prow, columns)
        return self._parent.sigma_at(sel[rows], columns)

    def mig_free_array(self, profile: str) -> I64:
        got = self.mig_free.get(profile)
        if got is None:
            got = self.mig_free[profile] = self._parent.mig_free_array(profile)[self._sel]
        return got
