"""The shipped Grafana dashboard only queries metrics the agent really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from gpufleet.agent.backends.simulated import SimulatedBackend
from gpufleet.agent.enforcement import GpuSharing, SharingConfig
from gpufleet.agent.metrics import register_sharing

ROOT = Path(__file__).resolve().parents[3]


async def _stop(job_id: str, reason: str, message: str) -> None:
    return None


async def exported_names(tmp_path: Path) -> set[str]:
    backend = SimulatedBackend([("H100-80GB", 2)], tmp_path, node_name="n1")
    sharing = GpuSharing(backend, tmp_path, SharingConfig(), _stop)
    await sharing.sample_once()
    registry = CollectorRegistry()
    register_sharing(sharing, registry)
    names = set()
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name + "_total" if kind == "counter" and not name.endswith("_total") else name)
    sharing.close()
    return names


async def test_dashboard_queries_exported_metrics(tmp_path: Path) -> None:
    dash = json.loads((ROOT / "packaging" / "grafana" / "gpufleet-agents.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    used = {m for e in exprs for m in re.findall(r"\b(?:DCGM_FI_[A-Z_]+|gpufleet_[a-z_]+)\b", e)}
    assert used, "the dashboard queries nothing"
    missing = used - await exported_names(tmp_path)
    assert not missing, f"dashboard queries metrics the agent does not export: {sorted(missing)}"
