"""Store key layout and (de)serialization of the records the coordinator keeps there.

```
/gpufleet/jobs/<job id>          pb.Job      (spec, state, history, assignments)
/gpufleet/requests/<request id>  job id      (SubmitJob idempotency index)
/gpufleet/nodes/<node name>      pb.Node     (inventory, state, cordon/drain; no telemetry or heartbeat)
/gpufleet/budgets/<team>         pb.Budget
/gpufleet/costs/<day start ms>   pb.CostDay  (cost of removed finished jobs, per team and project)
```
``/gpufleet/leader`` and ``/gpufleet/replicas/`` belong to the leader elector.
"""

from __future__ import annotations

from gpufleet.coordinator.store.base import KeyValue
from gpufleet.proto.v1 import types_pb2 as pb

ROOT = "/gpufleet/"
JOBS = ROOT + "jobs/"
REQUESTS = ROOT + "requests/"
NODES = ROOT + "nodes/"
BUDGETS = ROOT + "budgets/"
COSTS = ROOT + "costs/"
REPLICAS = ROOT + "replicas/"


def job_key(job_id: str) -> str:
    return JOBS + job_id


def request_key(request_id: str) -> str:
    return REQUESTS + request_id


def node_key(name: str) -> str:
    return NODES + name


def budget_key(team: str) -> str:
    return BUDGETS + team


def cost_day_key(day_start_ms: int) -> str:
    return COSTS + f"{day_start_ms:013d}"


def job_from_kv(kv: KeyValue) -> pb.Job:
    job = pb.Job.FromString(kv.value)
    job.revision = kv.mod_revision
    return job


def node_from_kv(kv: KeyValue) -> pb.Node:
    node = pb.Node.FromString(kv.value)
    node.revision = kv.mod_revision
    return node


def encode_job(job: pb.Job) -> bytes:
    """Serialized without the revision field (the store's mod revision is the truth)."""
    copy = pb.Job()
    copy.CopyFrom(job)
    copy.revision = 0
    return copy.SerializeToString(deterministic=True)


def encode_node(node: pb.Node) -> bytes:
    """Serialized without memory-only fields: revision, heartbeat and telemetry are not stored."""
    copy = pb.Node()
    copy.CopyFrom(node)
    copy.revision = 0
    copy.last_heartbeat_ms = 0
    del copy.telemetry[:]
    return copy.SerializeToString(deterministic=True)
