"""From a chosen node (and GPU) to concrete devices: which GPUs, which MIG slice, and the TaskAssignment.

Whole GPUs on one node prefer a set that shares a NUMA node and NVLink (from the inventory); a fraction gets
the GPU the scores chose; a MIG job gets the lowest free slice of its profile on the chosen GPU.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from gpufleet.common import gpu_models
from gpufleet.coordinator.scheduler.framework import B, Candidates, Options
from gpufleet.coordinator.scheduler.request import KIND_CPU, KIND_FRACTION, KIND_MIG, MILLI, Request
from gpufleet.coordinator.scheduler.state import Alloc, ClusterState, DeviceUse
from gpufleet.proto.v1 import types_pb2 as pb


@dataclass(frozen=True, slots=True)
class Member:
    node: int
    alloc: Alloc
    model_milli: dict[str, int]
    devices: list[pb.DeviceAssignment]


def options(req: Request, cand: Candidates) -> Options:
    if req.kind in (KIND_FRACTION, KIND_MIG) and cand.gpu is not None:
        rows, cols = np.nonzero(cand.gpu & cand.node[:, None])
        return Options(rows, cols)
    nodes = np.flatnonzero(cand.node)
    return Options(nodes, np.full(len(nodes), -1, dtype=np.int64))


def pick_whole(st: ClusterState, i: int, fits: B, k: int) -> list[int]:
    """k idle GPU columns on node i, preferring one NUMA node and NVLink peers (remembered per topology, free
    columns and k: nodes of one machine type repeat the same few patterns)."""
    free: list[int] = np.flatnonzero(fits).tolist()
    if k >= len(free):
        return free[:k]
    key = (st.topology[i], tuple(free), k)
    got = _PICKS.get(key)
    if got is None:
        if len(_PICKS) >= _PICKS_MAX:
            _PICKS.clear()
        got = _PICKS[key] = tuple(_pick_whole(st, i, free, k))
    return list(got)


_PICKS: dict[tuple[object, ...], tuple[int, ...]] = {}
_PICKS_MAX = 65_536


def _pick_whole(st: ClusterState, i: int, free: list[int], k: int) -> list[int]:
    groups: dict[int, list[int]] = {}
    numa: list[int] = st.g_numa[i].tolist()
    for c in free:
        groups.setdefault(numa[c], []).append(c)
    # best fit: the smallest NUMA group that holds all k, so larger groups stay whole for larger jobs
    fitting = sorted((len(g), numa) for numa, g in groups.items() if len(g) >= k)
    pool = groups[fitting[0][1]] if fitting else free
    links = st.nvlink[i]
    if links and any(links):
        # greedy: start from the GPU with most links inside the pool, add the best-connected next
        chosen = [max(pool, key=lambda c: (len(links[c] & set(pool)), -c))]
        while len(chosen) < k:
            rest = [c for c in pool if c not in chosen]
            chosen.append(max(rest, key=lambda c: (sum(1 for x in chosen if x in links[c]), -c)))
        return sorted(chosen)
    return pool[:k] if len(pool) >= k else free[:k]


def whole_fits_row(st: ClusterState, req: Request, i: int) -> B:
    """Idle GPUs of node slot i that a whole-GPU request may take (the GpuFit rule for one node)."""
    row: B = st.g_open[i] & (st.g_free_milli[i] >= MILLI)
    if req.models:
        row &= st.models.lookup(req.models)[st.g_model[i]]
    if req.mem_mib:
        row &= st.g_total_mib[i] >= req.mem_mib
    return row


def member(st: ClusterState, req: Request, i: int, col: int, fits: B | None, mps: bool) -> Member:
    """Devices for one member on node slot i (col: the scored GPU for fractions and MIG)."""
    devices: list[pb.DeviceAssignment] = []
    uses: list[DeviceUse] = []
    model_milli: dict[str, int] = {}
    idx = st.gpu_index[i]
    uuids = st.gpu_uuid[i]

    row_model: list[int] = st.g_model[i].tolist()
    row_total: list[int] = st.g_total_mib[i].tolist()

    def model_of(c: int) -> str:
        return st.models.names[row_model[c]]

    if req.kind == KIND_FRACTION:
        total = row_total[col]
        mib = req.mem_mib or total * req.milli_per_gpu // MILLI
        mode = pb.SHARING_MODE_MPS if mps else pb.SHARING_MODE_SHARED
        devices.append(
            pb.DeviceAssignment(
                gpu_index=idx[col], gpu_uuid=uuids[col], mode=mode, gpu_milli=req.milli_per_gpu, gpu_memory_mib=mib
            )
        )
        uses.append(DeviceUse(col, req.milli_per_gpu, mib))
        model_milli[model_of(col)] = req.milli_per_gpu
    elif req.kind == KIND_MIG:
        slot = min(
            (s for s in st.mig_slots[i][col] if not s.used and s.profile == req.mig_profile), key=lambda s: s.start
        )
        prof = gpu_models.MODELS[model_of(col)].profile(req.mig_profile) if model_of(col) in gpu_models.MODELS else None
        milli = (prof.compute_slices if prof else 1) * MILLI // gpu_models.MIG_COMPUTE_SLICES
        devices.append(
            pb.DeviceAssignment(
                gpu_index=idx[col],
                gpu_uuid=uuids[col],
                mode=pb.SHARING_MODE_MIG,
                gpu_milli=milli,
                gpu_memory_mib=slot.memory_mib,
                mig_profile=slot.profile,
                mig_device_uuid=slot.uuid,
                mig_gi_id=slot.gi_id,
            )
        )
        uses.append(DeviceUse(col, milli, 0, slot.uuid))
        model_milli[model_of(col)] = milli
    elif req.kind != KIND_CPU:
        row = fits[i] if fits is not None else whole_fits_row(st, req, i)
        for c in pick_whole(st, i, row, req.gpus):
            total = row_total[c]
            devices.append(
                pb.DeviceAssignment(
                    gpu_index=idx[c],
                    gpu_uuid=uuids[c],
                    mode=pb.SHARING_MODE_EXCLUSIVE,
                    gpu_milli=MILLI,
                    gpu_memory_mib=total,
                )
            )
            uses.append(DeviceUse(c, MILLI, total))
            model_milli[model_of(c)] = model_milli.get(model_of(c), 0) + MILLI
    if not model_milli:
        model_milli[""] = 0
    alloc = Alloc(st.names[i], tuple(uses), req.cpu_milli, req.memory_mib)
    return Member(i, alloc, model_milli, devices)


def assignments(st: ClusterState, req: Request, members: list[Member], base_port: int) -> list[pb.TaskAssignment]:
    if req.nodes <= 1:
        m = members[0]
        return [pb.TaskAssignment(node=st.names[m.node], node_rank=0, devices=m.devices)]
    rank0 = st.nodes[members[0].node]
    addr = ""
    if rank0 is not None:
        addr = rank0.inventory.address or rank0.inventory.hostname or rank0.inventory.name
    port = base_port + zlib.crc32(req.job_id.encode()) % 1000
    per_node = max(1, req.gpus)
    return [
        pb.TaskAssignment(
            node=st.names[m.node],
            node_rank=rank,
            devices=m.devices,
            master_addr=addr,
            master_port=port,
            world_size=req.nodes * per_node,
            nnodes=req.nodes,
        )
        for rank, m in enumerate(members)
    ]
