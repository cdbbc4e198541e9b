"""Checks before a MIG change: a layout keeps every slice in use; a mode change needs an idle GPU.

Errors name the slice and the job (or pid) using it, so an operator knows what to stop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from gpufleet.agent.backends.base import GpuDevice
from gpufleet.common.errors import FailedPreconditionError


def check_layout_keeps(gpu: GpuDevice, profiles: Sequence[str], in_use: Mapping[str, str]) -> None:
    """Refuse a layout that has fewer slices of some profile than are in use on ``gpu``."""
    by_uuid = {d.uuid: d for d in gpu.mig_devices}
    want = Counter(profiles)
    used: Counter[str] = Counter()
    for uuid in in_use:
        d = by_uuid.get(uuid)
        if d is not None:
            used[d.profile] += 1
    for uuid, who in in_use.items():
        d = by_uuid.get(uuid)
        if d is not None and want[d.profile] < used[d.profile]:
            raise FailedPreconditionError(
                f"GPU {gpu.index}: MIG slice {d.profile} ({uuid}, GI {d.gi_id}) is used by {who}; "
                f"the layout [{', '.join(profiles)}] would remove it. Stop {who} first or keep "
                f"{used[d.profile]} x {d.profile} in the layout"
            )


def check_idle(gpu_index: int, jobs: Sequence[str], pids: Sequence[int]) -> None:
    if jobs or pids:
        users = [f"job {j}" for j in jobs] + [f"pid {p}" for p in pids]
        raise FailedPreconditionError(
            f"GPU {gpu_index} is in use by {', '.join(users)}; MIG mode changes need an idle GPU "
            "(drain the node or stop those jobs first)"
        )
