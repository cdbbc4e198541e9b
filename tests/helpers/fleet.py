"""Launch coordinators and simulated agents as real processes on loopback, for integration tests and benches.

```
fleet = Fleet(tmp_path, store_url=etcd.url, node_timeout_s=3, leader_ttl_s=2)
c1 = fleet.start_coordinator("c1")            # --listen 127.0.0.1:0; the address is read from its output
a1 = fleet.start_agent("node-1", gpus="H100-80GB:8")
api = fleet.api()                              # JobService/NodeService/ClusterService stubs on every replica
...
fleet.stop_all()                               # always (the ``fleet`` fixture does it in a finally)
```
Every process writes its output to ``<tmp>/<name>.log``; :meth:`Fleet.logs` returns them for failure messages.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psutil

from gpufleet.common.errors import LEADER_METADATA_KEY
from gpufleet.proto.v1 import cluster_pb2 as cpb
from gpufleet.proto.v1 import cluster_pb2_grpc, jobs_pb2_grpc, nodes_pb2_grpc
from gpufleet.proto.v1 import jobs_pb2 as jpb
from gpufleet.proto.v1 import types_pb2 as pb

T = TypeVar("T")
LISTEN_RE = re.compile(rb"listening on (\S+)")
CLI = [sys.executable, "-m", "gpufleet.common.cli"]


@dataclass
class Proc:
    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    address: str = ""
    paused: bool = False

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()

    def signal(self, sig: int) -> None:
        if self.alive:
            os.kill(self.pid, sig)
            if sig == signal.SIGSTOP:
                self.paused = True
            elif sig == signal.SIGCONT:
                self.paused = False

    def kill(self) -> None:
        """kill -9 (the process group is left alone: an agent's jobs survive their agent)."""
        if self.popen is not None and self.alive:
            if self.paused:
                os.kill(self.pid, signal.SIGCONT)
            self.popen.kill()
            self.popen.wait(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.popen is None or not self.alive:
            return
        if self.paused:
            self.signal(signal.SIGCONT)
        self.popen.terminate()
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_listening(self, timeout_s: float = 20.0) -> str:
        deadline = time.monotonic() + timeout_s
        offset = 0
        while time.monotonic() < deadline:
            data = self.log_path.read_bytes() if self.log_path.exists() else b""
            matches = list(LISTEN_RE.finditer(data, offset))
            if matches:
                m = matches[-1]
                self.address = m.group(1).decode()
                return self.address
            if not self.alive:
                raise RuntimeError(f"{self.name} exited ({self.popen and self.popen.returncode}):\n{self.output()}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not start listening in {timeout_s}s:\n{self.output()}")


@dataclass
class Api:
    """Stubs on one replica."""

    address: str
    channel: grpc.Channel
    jobs: jobs_pb2_grpc.JobServiceStub = field(init=False)
    nodes: nodes_pb2_grpc.NodeServiceStub = field(init=False)
    cluster: cluster_pb2_grpc.ClusterServiceStub = field(init=False)
    cost: cluster_pb2_grpc.CostServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.nodes = nodes_pb2_grpc.NodeServiceStub(self.channel)
        self.cluster = cluster_pb2_grpc.ClusterServiceStub(self.channel)
        self.cost = cluster_pb2_grpc.CostServiceStub(self.channel)


def leader_hint(err: grpc.RpcError) -> str:
    metadata: Any = err.trailing_metadata()
    for item in metadata or ():
        if item[0] == LEADER_METADATA_KEY:
            return str(item[1])
    return ""


class Fleet:
    def __init__(
        self,
        tmp: Path,
        *,
        store_url: str = "embedded",
        node_timeout_s: float = 3.0,
        failover_grace_s: float = 0.0,
        leader_ttl_s: int = 2,
        status_interval_ms: int = 300,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.store_url = store_url
        self.coordinators: dict[str, Proc] = {}
        self.agents: dict[str, Proc] = {}
        self._channels: dict[str, grpc.Channel] = {}
        self.env = dict(os.environ)
        self.env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "GPUFLEET_COORDINATOR__LIVENESS__NODE_TIMEOUT_S": str(node_timeout_s),
                "GPUFLEET_COORDINATOR__LIVENESS__CHECK_INTERVAL_S": "0.2",
                "GPUFLEET_COORDINATOR__LIVENESS__FAILOVER_GRACE_S": str(failover_grace_s),
                "GPUFLEET_COORDINATOR__LEADERSHIP__TTL_S": str(leader_ttl_s),
                "GPUFLEET_COORDINATOR__AGENTS__STATUS_INTERVAL_MS": str(status_interval_ms),
                "GPUFLEET_COORDINATOR__AGENTS__RESYNC_INTERVAL_S": "1",
                "GPUFLEET_COORDINATOR__AGENTS__GRACE_PERIOD_S": "2",
                "GPUFLEET_COORDINATOR__SCHEDULING__TICK_S": "0.5",
            }
        )
        self.env.update(extra_env or {})

    # ------------------------------------------------------------------ processes

    def start_coordinator(self, name: str, *, listen: str = "127.0.0.1:0", wait: bool = True) -> Proc:
        state = self.tmp / name
        args = [*CLI, "coordinator", "--listen", listen, "--store", self.store_url, "--state-dir", str(state)]
        args += ["--id", name]
        proc = Proc(name, args, self.tmp / f"{name}.log", self.env)
        proc.start()
        self.coordinators[name] = proc
        if wait:
            proc.wait_listening()
        return proc

    def restart_coordinator(self, name: str) -> Proc:
        """Start a stopped coordinator again on the same address."""
        proc = self.coordinators[name]
        assert not proc.alive
        addr = proc.address
        proc.args = [*CLI, "coordinator", "--listen", addr, "--store", self.store_url]
        proc.args += ["--state-dir", str(self.tmp / name), "--id", name]
        proc.start()
        proc.wait_listening()
        return proc

    def coordinator_addresses(self) -> list[str]:
        return [p.address for p in self.coordinators.values() if p.address]

    def start_agent(self, name: str, *, gpus: str = "H100-80GB:8", extra: list[str] | None = None) -> Proc:
        state = self.tmp / f"agent-{name}"
        args = [*CLI, "agent", "--coordinator", ",".join(self.coordinator_addresses()), "--name", name]
        args += ["--simulate", gpus, "--state-dir", str(state), *(extra or [])]
        proc = Proc(name, args, self.tmp / f"agent-{name}.log", self.env)
        proc.start()
        self.agents[name] = proc
        return proc

    def restart_agent(self, name: str) -> Proc:
        proc = self.agents[name]
        assert not proc.alive
        proc.start()
        return proc

    def stop_all(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()
        for p in self.agents.values():  # agents leave their jobs running by design: kill both, quickly
            with contextlib.suppress(Exception):
                p.kill()
        for p in self.coordinators.values():
            with contextlib.suppress(Exception):
                p.stop(5)
        self.kill_leftover_jobs()

    def kill_leftover_jobs(self) -> None:
        """Jobs outlive their agent by design; kill the ones this fleet's agents started (their simulated-GPU
        directory lies under this fleet's folder)."""
        root = str(self.tmp)
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("GPUFLEET_SIM_DIR", "").startswith(root):
                    proc.kill()

    def logs(self) -> str:
        out = []
        for p in [*self.coordinators.values(), *self.agents.values()]:
            out.append(f"===== {p.name}\n{p.output()[-6000:]}")
        return "\n".join(out)

    # ------------------------------------------------------------------ API

    def api(self, address: str | None = None) -> Api:
        addr = address or self.leader_address()
        ch = self._channels.get(addr)
        if ch is None:
            ch = grpc.insecure_channel(addr)
            self._channels[addr] = ch
        return Api(addr, ch)

    def status(self, address: str, timeout_s: float = 2.0) -> cpb.ClusterStatus:
        stub = cluster_pb2_grpc.ClusterServiceStub(self.api(address).channel)
        return stub.GetClusterStatus(cpb.GetClusterStatusRequest(), timeout=timeout_s)

    def leader_address(self, timeout_s: float = 30.0, exclude: str = "") -> str:
        """The address of the current leader, as the live, unpaused replicas agree on it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for p in self.coordinators.values():
                if not p.alive or p.paused or not p.address:
                    continue
                try:
                    st = self.status(p.address)
                except grpc.RpcError:
                    continue
                if st.leader_address and st.leader_address != exclude:
                    leader = next((q for q in self.coordinators.values() if q.address == st.leader_address), None)
                    if leader is not None and leader.alive and not leader.paused:
                        return st.leader_address
            time.sleep(0.1)
        raise TimeoutError(f"no leader within {timeout_s}s\n{self.logs()}")

    def leader(self, **kw: Any) -> Proc:
        addr = self.leader_address(**kw)
        return next(p for p in self.coordinators.values() if p.address == addr)

    def call_leader(self, fn: Callable[[Api], T], timeout_s: float = 30.0) -> T:
        """Call ``fn`` on the leader, following redirects and retrying while there is none."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                return fn(self.api(self.leader_address(timeout_s=max(1.0, deadline - time.monotonic()))))
            except grpc.RpcError as err:
                code = err.code()
                if code not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise
                last = err
                time.sleep(0.1)
        raise TimeoutError(f"leader call kept failing: {last}")

    def submit(self, spec: pb.JobSpec, request_id: str = "") -> jpb.SubmitJobResponse:
        req = jpb.SubmitJobRequest(spec=spec, request_id=request_id)
        return self.call_leader(lambda api: api.jobs.SubmitJob(req, timeout=5))

    def get_job(self, job_id: str) -> pb.Job:
        return self.call_leader(lambda api: api.jobs.GetJob(jpb.GetJobRequest(id=job_id), timeout=5))

    def wait_job(self, job_id: str, pred: Callable[[pb.Job], bool], timeout_s: float = 30.0) -> pb.Job:
        deadline = time.monotonic() + timeout_s
        job = self.get_job(job_id)
        while time.monotonic() < deadline:
            if pred(job):
                return job
            time.sleep(0.1)
            job = self.get_job(job_id)
        raise AssertionError(f"job {job_id} never got there; last: {job}\n{self.logs()}")

    def wait_nodes(self, count: int, timeout_s: float = 30.0, state: int = pb.NODE_STATE_READY) -> list[pb.Node]:
        deadline = time.monotonic() + timeout_s
        nodes: list[pb.Node] = []
        while time.monotonic() < deadline:
            try:
                nodes = list(self.api().nodes.ListNodes(_list_nodes(), timeout=5).nodes)
            except grpc.RpcError:
                nodes = []
            if sum(1 for n in nodes if n.state == state) >= count:
                return nodes
            time.sleep(0.2)
        raise AssertionError(f"{count} nodes never became ready; have {nodes}\n{self.logs()}")


def _list_nodes() -> Any:
    from gpufleet.proto.v1 import nodes_pb2

    return nodes_pb2.ListNodesRequest()


def job_spec(command: list[str], *, gpu_milli: int = 1000, name: str = "t", **kw: Any) -> pb.JobSpec:
    spec = pb.JobSpec(name=name, team=kw.pop("team", "ml"), project=kw.pop("project", "p"), command=command, **kw)
    spec.resources.gpu_milli = gpu_milli
    return spec
