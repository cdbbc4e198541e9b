"""The environment a job gets for its GPUs.

Always: ``CUDA_VISIBLE_DEVICES`` (GPU UUIDs, or the MIG device UUID for a MIG slice) and
``CUDA_DEVICE_ORDER=PCI_BUS_ID``. For a fractional (SHARED or MPS) GPU the memory limit in the forms
frameworks read:

- ``GPUFLEET_GPU_MEMORY_LIMIT_MIB`` -- the limit per visible GPU (comma-separated if they differ);
- ``GPUFLEET_GPU_MEMORY_FRACTION`` -- limit / device memory; PyTorch users call
  ``torch.cuda.set_per_process_memory_fraction(float(os.environ["GPUFLEET_GPU_MEMORY_FRACTION"]))``;
- ``XLA_PYTHON_CLIENT_MEM_FRACTION`` -- JAX preallocates exactly this fraction (its pool cannot grow past);
- ``TF_FORCE_GPU_ALLOW_GROWTH=true`` -- TensorFlow grows on demand instead of taking the whole GPU;
- ``GPUFLEET_GPU_SHARE_MILLI`` -- the job's compute share.

Under MPS also ``CUDA_MPS_PIPE_DIRECTORY``, ``CUDA_MPS_LOG_DIRECTORY``, ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``
("0=10240M", the index in the job's visible set) and ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` (share / 10),
which the driver enforces.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpufleet.agent.enforcement.mps import MpsDirs


@dataclass(frozen=True, slots=True)
class VisibleGpu:
    visible_id: str  # GPU or MIG UUID
    device_memory_mib: int
    limit_mib: int  # 0: whole device / no limit
    share_milli: int
    fractional: bool


def build_env(gpus: list[VisibleGpu], mps: MpsDirs | None) -> dict[str, str]:
    env: dict[str, str] = {}
    if not gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
        return env
    env["CUDA_VISIBLE_DEVICES"] = ",".join(g.visible_id for g in gpus)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    limited = [g for g in gpus if g.fractional and g.limit_mib > 0]
    if limited:
        limits = {g.limit_mib for g in gpus if g.fractional}
        env["GPUFLEET_GPU_MEMORY_LIMIT_MIB"] = (
            str(limits.pop()) if len(limits) == 1 else ",".join(str(g.limit_mib) for g in gpus)
        )
        fraction = min(g.limit_mib / g.device_memory_mib for g in limited if g.device_memory_mib > 0)
        env["GPUFLEET_GPU_MEMORY_FRACTION"] = f"{fraction:.4f}"
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction:.4f}"
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    shares = [g.share_milli for g in gpus if g.fractional]
    if shares:
        env["GPUFLEET_GPU_SHARE_MILLI"] = str(min(shares))
    if mps is not None:
        env["CUDA_MPS_PIPE_DIRECTORY"] = str(mps.pipe)
        env["CUDA_MPS_LOG_DIRECTORY"] = str(mps.log)
        env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = ",".join(
            f"{i}={g.limit_mib}M" for i, g in enumerate(gpus) if g.fractional and g.limit_mib > 0
        )
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(max(1, min(100, (min(shares) if shares else 1000) // 10)))
    return env
