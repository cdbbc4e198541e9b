"""The environment a job runs with: the agent's own environment (minus agent configuration), the spec's env,
then what gpufleet sets (device visibility, job identity, gang rendezvous), which the spec cannot override."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gpufleet.proto.v1 import types_pb2 as pb

#: agent configuration never leaks into jobs
_AGENT_ONLY_PREFIXES = ("GPUFLEET_AGENT__", "GPUFLEET_COORDINATOR", "NOTIFY_SOCKET", "WATCHDOG_")


def cuda_visible_devices(devices: Sequence[pb.DeviceAssignment]) -> str:
    """The UUIDs a job may see: MIG device UUIDs for MIG slices, GPU UUIDs otherwise (index as last resort)."""
    out: list[str] = []
    for d in devices:
        uuid = d.mig_device_uuid or d.gpu_uuid or str(d.gpu_index)
        if uuid not in out:
            out.append(uuid)
    return ",".join(out)


def gang_env(assignment: pb.TaskAssignment) -> dict[str, str]:
    """Rendezvous variables torchrun, DDP and Horovod read, for one process per node (LOCAL_RANK 0).

    RANK is this node's first global rank (node_rank x processes per node); launchers such as torchrun
    derive per-process ranks from NODE_RANK / NNODES themselves.
    """
    nnodes = max(assignment.nnodes, 1)
    if nnodes <= 1 and assignment.world_size <= 1:
        return {}
    world = max(assignment.world_size, nnodes)
    local_world = max(world // nnodes, 1)
    rank = assignment.node_rank * local_world
    env = {
        "MASTER_ADDR": assignment.master_addr,
        "MASTER_PORT": str(assignment.master_port),
        "WORLD_SIZE": str(world),
        "RANK": str(rank),
        "NODE_RANK": str(assignment.node_rank),
        "GROUP_RANK": str(assignment.node_rank),
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": str(local_world),
        "NNODES": str(nnodes),
        "HOROVOD_RANK": str(rank),
        "HOROVOD_SIZE": str(world),
        "HOROVOD_LOCAL_RANK": "0",
        "HOROVOD_LOCAL_SIZE": str(local_world),
    }
    return env


def job_env(
    *,
    base: Mapping[str, str],
    spec_env: Mapping[str, str],
    job_id: str,
    attempt: int,
    assignment: pb.TaskAssignment,
    sharing_env: Mapping[str, str],
) -> dict[str, str]:
    """Compose the job's environment; later layers win: base < spec env < sharing < identity < gang."""
    env = {k: v for k, v in base.items() if not k.startswith(_AGENT_ONLY_PREFIXES)}
    env.update(spec_env)
    env.update(sharing_env)
    if "CUDA_VISIBLE_DEVICES" not in sharing_env:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(assignment.devices)
    env["GPUFLEET_JOB_ID"] = job_id
    env["GPUFLEET_ATTEMPT"] = str(attempt)
    env["GPUFLEET_NODE"] = assignment.node
    env.update(gang_env(assignment))
    return env
