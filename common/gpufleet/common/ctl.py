"""User commands: ``gpufleet job|node|cluster|cost ...`` on top of :class:`ApiClient`.

Exit codes: 0 success, 1 a failure reported by the system (unreachable, not found, refused), 2 bad input
(a flag, a spec file, or a request the coordinator rejected as INVALID_ARGUMENT), with one line per problem.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from gpufleet.common import lifecycle
from gpufleet.common.api_client import ApiClient
from gpufleet.common.errors import GpuFleetError, InvalidInputError, Problem
from gpufleet.common.jobspec import load_spec_file, parse_duration_s
from gpufleet.common.output import fmt_age, fmt_time, print_json, table
from gpufleet.common.quantities import format_gpus, format_mib, format_micros, parse_price_micros
from gpufleet.proto.v1 import cluster_pb2 as cpb
from gpufleet.proto.v1 import types_pb2 as pb

Handler = Callable[[argparse.Namespace], int]


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient(args.coordinator, timeout_s=args.timeout)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _job_gpus(spec: pb.JobSpec) -> str:
    r = spec.resources
    if r.mig_profile:
        return f"mig:{r.mig_profile}"
    if not r.gpu_milli:
        return "0"
    per = format_gpus(r.gpu_milli)
    return f"{spec.nodes}x{per}" if spec.nodes > 1 else per


def _placement(job: pb.Job) -> str:
    parts = []
    for t in job.assignments:
        devs = ",".join(
            str(d.gpu_index)
            + (f"/{d.mig_profile}" if d.mig_profile else "")
            + (f"@{format_gpus(d.gpu_milli)}" if 0 < d.gpu_milli < 1000 else "")
            for d in t.devices
        )
        parts.append(f"{t.node}[{devs}]" if devs else t.node)
    return " ".join(parts) or "-"


# ---------------------------------------------------------------- job


def job_validate(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.files:
        try:
            spec = load_spec_file(path)
        except InvalidInputError as err:
            bad += 1
            for p in err.problems:
                print(f"{path}: {p}", file=sys.stderr)
            continue
        print(f"{path}: ok ({spec.name}: {_job_gpus(spec)} GPU, {spec.nodes} node(s), priority {spec.priority})")
    return 2 if bad else 0


def job_submit(args: argparse.Namespace) -> int:
    specs = []
    for path in args.files:
        try:
            specs.append((path, load_spec_file(path)))
        except InvalidInputError as err:
            for p in err.problems:
                print(f"{path}: {p}", file=sys.stderr)
            return 2
    with _client(args) as client:
        jobs = []
        for _path, spec in specs:
            resp = client.submit_job(spec, request_id=args.request_id)
            jobs.append(resp.job)
        if args.wait:
            jobs = [_wait(client, j.id) for j in jobs]
    if args.output == "json":
        print_json(jobs)
    else:
        for j in jobs:
            print(f"{j.id}  {j.spec.name}  {lifecycle.state_name(j.state)}  {j.message}".rstrip())
    return 0 if all(j.state != pb.JOB_STATE_FAILED for j in jobs) else 1


def _wait(client: ApiClient, job_id: str) -> pb.Job:
    for event in client.watch_jobs(job_id=job_id):
        if event.job.state in lifecycle.TERMINAL:
            return event.job
    return client.get_job(job_id)


def job_list(args: argparse.Namespace) -> int:
    states = [lifecycle.parse_state(s) for s in args.state] if args.state else []
    with _client(args) as client:
        jobs = client.list_jobs(team=args.team, project=args.project, states=states)
    if args.output == "json":
        print_json(jobs)
        return 0
    now = _now_ms()
    rows = [
        (
            j.id,
            j.spec.name,
            j.spec.team,
            lifecycle.state_name(j.state),
            _job_gpus(j.spec),
            _placement(j),
            fmt_age(j.created_ms, now),
            (j.message or j.reason)[:70],
        )
        for j in sorted(jobs, key=lambda j: j.created_ms)
    ]
    table(("ID", "NAME", "TEAM", "STATE", "GPUS", "PLACEMENT", "AGE", "REASON"), rows)
    return 0


def job_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get_job(args.id)
    if args.output == "json":
        print_json(job)
        return 0
    s = job.spec
    print(f"id:        {job.id}")
    print(f"name:      {s.name}  (team {s.team}, project {s.project})")
    print(f"state:     {lifecycle.state_name(job.state)}" + (f"  reason {job.reason}" if job.reason else ""))
    if job.message:
        print(f"why:       {job.message}")
    print(f"command:   {' '.join(s.command)}")
    print(f"gpus:      {_job_gpus(s)}  priority {s.priority or 'normal'}  attempt {job.attempt}")
    print(f"placement: {_placement(job)}")
    if job.state in lifecycle.TERMINAL:
        print(f"exit code: {job.exit_code}")
    print("history:")
    rows = [
        (fmt_time(t.at_ms), lifecycle.state_name(t.from_state), lifecycle.state_name(t.to_state), t.reason, t.message)
        for t in job.history
    ]
    table(("TIME", "FROM", "TO", "REASON", "MESSAGE"), rows)
    return 0


def job_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel_job(args.id, reason=args.reason)
    print(f"{job.id}  {lifecycle.state_name(job.state)}")
    return 0


def job_logs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for chunk in client.job_logs(args.id, follow=args.follow, tail_lines=args.tail, node_rank=args.rank):
            sys.stdout.buffer.write(chunk.data)
            sys.stdout.flush()
    return 0


def job_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            for ev in client.watch_jobs(job_id=args.id or "", team=args.team):
                j = ev.job
                if args.output == "json":
                    print_json(
                        {
                            "revision": ev.revision,
                            "type": ev.type,
                            "job": {
                                "id": j.id,
                                "state": lifecycle.state_name(j.state),
                                "reason": j.reason,
                                "message": j.message,
                            },
                        }
                    )
                else:
                    print(
                        f"{fmt_time(j.updated_ms)}  {j.id}  {j.spec.name:<24} {lifecycle.state_name(j.state):<10} {j.message}".rstrip(),
                        flush=True,
                    )
                if args.id and j.state in lifecycle.TERMINAL:
                    return 0
        except KeyboardInterrupt:
            return 0
    return 0


# ---------------------------------------------------------------- node


def _node_state(n: pb.Node) -> str:
    state = pb.NodeState.Name(n.state).removeprefix("NODE_STATE_")
    return state + (",CORDONED" if n.cordoned and n.state == pb.NODE_STATE_READY else "")


def node_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        nodes = client.list_nodes()
    if args.output == "json":
        print_json(nodes)
        return 0
    rows = []
    for n in sorted(nodes, key=lambda n: n.inventory.name):
        inv = n.inventory
        models = sorted({g.model for g in inv.gpus})
        where = "/".join(x for x in (inv.provider, inv.region) if x) or "-"
        rows.append(
            (
                inv.name,
                _node_state(n),
                f"{len(inv.gpus)}x{','.join(models)}" if inv.gpus else "0",
                f"{format_gpus(n.allocated_gpu_milli)}/{format_gpus(n.capacity_gpu_milli)}",
                len(n.job_ids),
                where,
                n.reason[:50],
            )
        )
    table(("NAME", "STATE", "GPUS", "ALLOCATED", "JOBS", "WHERE", "REASON"), rows)
    return 0


def node_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        n = client.get_node(args.name)
    if args.output == "json":
        print_json(n)
        return 0
    inv = n.inventory
    print(f"name:     {inv.name}  ({inv.hostname} {inv.address})")
    print(f"state:    {_node_state(n)}" + (f"  {n.reason}" if n.reason else ""))
    print(
        f"where:    provider={inv.provider or '-'} region={inv.region or '-'} zone={inv.zone or '-'} type={inv.instance_type or '-'} spot={inv.spot}"
    )
    print(f"cpu/mem:  {inv.cpu_milli // 1000} cores, {format_mib(inv.memory_mib)}; backend {inv.gpu_backend}")
    print(f"jobs:     {', '.join(n.job_ids) or '-'}")
    tele = {t.index: t for t in n.telemetry}
    rows = []
    for g in inv.gpus:
        t = tele.get(g.index)
        mig = (
            ",".join(f"{m.profile}{'*' if m.job_id else ''}" for m in g.mig_instances)
            if g.mig_mode == pb.MIG_MODE_ENABLED
            else "-"
        )
        rows.append(
            (
                g.index,
                g.model,
                g.uuid[:20],
                format_mib(g.memory_mib),
                f"{t.utilization_pct}%" if t else "-",
                format_mib(t.memory_used_mib) if t else "-",
                "ok" if g.healthy else f"UNHEALTHY {g.health_reason}",
                mig,
            )
        )
    table(("GPU", "MODEL", "UUID", "MEMORY", "UTIL", "USED", "HEALTH", "MIG"), rows)
    return 0


def node_cordon(args: argparse.Namespace) -> int:
    with _client(args) as client:
        n = client.cordon(args.name, reason=args.reason)
    print(f"{n.inventory.name}  {_node_state(n)}")
    return 0


def node_uncordon(args: argparse.Namespace) -> int:
    with _client(args) as client:
        n = client.uncordon(args.name)
    print(f"{n.inventory.name}  {_node_state(n)}")
    return 0


def node_drain(args: argparse.Namespace) -> int:
    deadline = parse_duration_s(args.deadline) if args.deadline else 0
    with _client(args) as client:
        n = client.drain(args.name, deadline_s=deadline, reason=args.reason)
    print(f"{n.inventory.name}  {_node_state(n)}  jobs: {', '.join(n.job_ids) or '-'}")
    return 0


def node_mig(args: argparse.Namespace) -> int:
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    with _client(args) as client:
        resp = client.set_mig_layout(args.name, args.gpu, profiles)
    print(f"{'accepted' if resp.accepted else 'refused'}: {resp.message}")
    return 0 if resp.accepted else 1


# ---------------------------------------------------------------- cluster and cost


def cluster_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        st = client.cluster_status()
    if args.output == "json":
        print_json(st)
        return 0
    print(f"version:  {st.version}")
    print(f"leader:   {st.leader_id or '(none)'} at {st.leader_address or '-'} (epoch {st.leader_epoch})")
    print(
        f"store:    {st.store.kind} {','.join(st.store.endpoints)} {'healthy' if st.store.healthy else 'UNHEALTHY ' + st.store.message}"
    )
    print(f"gpus:     {format_gpus(st.gpu_allocated_milli)} of {format_gpus(st.gpu_capacity_milli)} allocated")
    print("nodes:    " + (", ".join(f"{k.lower()}={v}" for k, v in sorted(st.nodes_by_state.items())) or "-"))
    print("jobs:     " + (", ".join(f"{k.lower()}={v}" for k, v in sorted(st.jobs_by_state.items())) or "-"))
    table(
        ("REPLICA", "ADDRESS", "ROLE", "LAST SEEN"),
        [(r.id, r.address, "leader" if r.leader else "follower", fmt_time(r.last_seen_ms)) for r in st.replicas],
    )
    return 0


def cluster_instances(args: argparse.Namespace) -> int:
    with _client(args) as client:
        items = client.list_instances()
    if args.output == "json":
        print_json(items)
        return 0
    table(
        ("ID", "POOL", "PROVIDER", "REGION", "TYPE", "SPOT", "STATE", "NODE", "PRICE/H", "REASON"),
        [
            (
                i.id,
                i.pool,
                i.provider,
                i.region,
                i.instance_type,
                i.spot,
                i.state,
                i.node or "-",
                format_micros(i.price_micros_per_hour),
                i.reason[:40],
            )
            for i in items
        ],
    )
    return 0


_GROUP_BY = {"team": cpb.COST_GROUP_BY_TEAM, "project": cpb.COST_GROUP_BY_PROJECT, "job": cpb.COST_GROUP_BY_JOB}


def cost_report(args: argparse.Namespace) -> int:
    end = _now_ms()
    start = end - parse_duration_s(args.since) * 1000
    with _client(args) as client:
        rep = client.cost_report(start_ms=start, end_ms=end, group_by=_GROUP_BY[args.by], team=args.team)
    if args.output == "json":
        print_json(rep)
        return 0
    rows = [(r.key, f"{r.gpu_milli_seconds / 3_600_000:.2f}", r.jobs, format_micros(r.cost_micros)) for r in rep.rows]
    table((args.by.upper(), "GPU-HOURS", "JOBS", "COST"), rows)
    print(f"total {format_micros(rep.total_cost_micros)} from {fmt_time(rep.start_ms)} to {fmt_time(rep.end_ms)}")
    return 0


def cost_budget_set(args: argparse.Namespace) -> int:
    try:
        limit = parse_price_micros(args.limit)
    except ValueError as err:
        raise InvalidInputError(Problem("--limit", str(err))) from None
    with _client(args) as client:
        b = client.set_budget(args.team, limit, parse_duration_s(args.period))
    print(
        f"{b.team}: {format_micros(b.limit_micros)} per {b.period_s // 86400}d, spent {format_micros(b.spent_micros)}"
    )
    return 0


def cost_budget_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        budgets = client.list_budgets()
    if args.output == "json":
        print_json(budgets)
        return 0
    table(
        ("TEAM", "LIMIT", "PERIOD", "SPENT"),
        [
            (b.team, format_micros(b.limit_micros), f"{b.period_s // 86400}d", format_micros(b.spent_micros))
            for b in budgets
        ],
    )
    return 0


# ---------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser, output: bool = True) -> None:
    p.add_argument("--coordinator", help="HOST:PORT[,HOST:PORT...] (default: $GPUFLEET_COORDINATOR or 127.0.0.1:7070)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    if output:
        p.add_argument("-o", "--output", choices=("table", "json"), default="table")


def build_parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gpufleet")
    top = root.add_subparsers(dest="group", required=True)

    job = top.add_parser("job", help="jobs").add_subparsers(dest="cmd", required=True)
    p = job.add_parser("validate", help="check job spec files without submitting")
    p.add_argument("files", nargs="+")
    p.set_defaults(fn=job_validate)
    p = job.add_parser("submit", help="submit job spec files")
    p.add_argument("files", nargs="+")
    p.add_argument("--request-id", help="idempotency key (default: a new one per call)")
    p.add_argument("--wait", action="store_true", help="wait until the jobs finish")
    _common(p)
    p.set_defaults(fn=job_submit)
    p = job.add_parser("list", help="list jobs")
    p.add_argument("--team", default="")
    p.add_argument("--project", default="")
    p.add_argument("--state", action="append", help="filter by state (repeatable): pending, running, ...")
    _common(p)
    p.set_defaults(fn=job_list)
    for name, fn, helptext in (
        ("get", job_get, "show one job and why it is where it is"),
        ("cancel", job_cancel, "cancel a job"),
    ):
        p = job.add_parser(name, help=helptext)
        p.add_argument("id")
        if name == "cancel":
            p.add_argument("--reason", default="cancelled by user")
        _common(p)
        p.set_defaults(fn=fn)
    p = job.add_parser("logs", help="print a job's output")
    p.add_argument("id")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--tail", type=int, default=0, help="only the last N lines")
    p.add_argument("--rank", type=int, default=0, help="gang member (node rank)")
    _common(p, output=False)
    p.set_defaults(fn=job_logs)
    p = job.add_parser("watch", help="stream job state changes")
    p.add_argument("id", nargs="?")
    p.add_argument("--team", default="")
    _common(p)
    p.set_defaults(fn=job_watch)

    node = top.add_parser("node", help="nodes").add_subparsers(dest="cmd", required=True)
    p = node.add_parser("list", help="list nodes")
    _common(p)
    p.set_defaults(fn=node_list)
    for name, fn in (("get", node_get), ("cordon", node_cordon), ("uncordon", node_uncordon), ("drain", node_drain)):
        p = node.add_parser(name)
        p.add_argument("name")
        if name in {"cordon", "drain"}:
            p.add_argument("--reason", default="")
        if name == "drain":
            p.add_argument("--deadline", default="", help="e.g. 10m: stop what is left after this long")
        _common(p)
        p.set_defaults(fn=fn)
    p = node.add_parser("mig", help="lay out MIG instances on one GPU of a node")
    p.add_argument("name")
    p.add_argument("--gpu", type=int, required=True)
    p.add_argument("--profiles", required=True, help="comma-separated, e.g. 3g.40gb,2g.20gb,1g.10gb")
    _common(p)
    p.set_defaults(fn=node_mig)

    cluster = top.add_parser("cluster", help="the control plane").add_subparsers(dest="cmd", required=True)
    p = cluster.add_parser("status", help="leader, replicas, store health")
    _common(p)
    p.set_defaults(fn=cluster_status)
    p = cluster.add_parser("instances", help="cloud instances the autoscaler manages")
    _common(p)
    p.set_defaults(fn=cluster_instances)

    cost = top.add_parser("cost", help="cost per team/project/job, budgets")
    cost.add_argument("--by", choices=tuple(_GROUP_BY), default="team")
    cost.add_argument("--since", default="24h", help="window ending now, e.g. 24h, 7d")
    cost.add_argument("--team", default="")
    _common(cost)
    cost.set_defaults(fn=cost_report)
    budget = (
        cost.add_subparsers(dest="cmd").add_parser("budget", help="budgets").add_subparsers(dest="bcmd", required=True)
    )
    p = budget.add_parser("set")
    p.add_argument("team")
    p.add_argument("--limit", required=True, help="dollars per period, e.g. 5000")
    p.add_argument("--period", default="30d")
    _common(p)
    p.set_defaults(fn=cost_budget_set)
    p = budget.add_parser("list")
    _common(p)
    p.set_defaults(fn=cost_budget_list)
    return root


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    fn: Handler = args.fn
    try:
        return fn(args)
    except InvalidInputError as err:
        for p in err.problems:
            print(f"gpufleet: {p}", file=sys.stderr)
        return 2
    except ValueError as err:  # a malformed flag value (duration, state name)
        print(f"gpufleet: {err}", file=sys.stderr)
        return 2
    except GpuFleetError as err:
        print(f"gpufleet: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
