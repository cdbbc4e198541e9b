"""SimulatedBackend: topology specs, stable UUIDs, declared per-process memory, MIG modelling, persistence."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from gpufleet.agent.backends.registry import create_backend
from gpufleet.agent.backends.simulated import SimulatedBackend, write_use
from gpufleet.common.errors import FailedPreconditionError, InvalidInputError, UnsupportedOperationError
from gpufleet.common.gpu_models import MODELS
from tests.unit.agent.fixtures.procs import processes, wait_for


def sim(tmp_path: Path, spec: str = "simulate:H100-80GB:2,L4:1", node: str = "n1") -> SimulatedBackend:
    b = create_backend(spec, tmp_path / "state", node_name=node)
    assert isinstance(b, SimulatedBackend)
    return b


def test_every_catalog_model_can_be_simulated(tmp_path: Path) -> None:
    spec = "simulate:" + ",".join(f"{m}:1" for m in MODELS)
    inv = sim(tmp_path, spec).inventory()
    assert [g.model for g in inv] == list(MODELS)
    for g in inv:
        assert g.memory_mib == MODELS[g.model].memory_mib
        assert g.mig_capable == MODELS[g.model].mig_capable
        assert g.uuid.startswith("GPU-") and len(g.uuid) == 40


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("simulate:H100:8", "unknown GPU model 'H100'"),
        ("simulate:H100-80GB:0", "bad count"),
        ("simulate:H100-80GB", "bad count"),
        ("simulate:", "needs a topology"),
        ("cuda", "unknown GPU backend spec"),
        ("simulate:L4:2:mig", "not MIG-capable"),
        ("simulate:A100-80GB:2:mog", "unknown option 'mog'"),
    ],
)
def test_bad_spec_names_simulate_and_valid_form(tmp_path: Path, spec: str, needle: str) -> None:
    with pytest.raises(InvalidInputError) as e:
        create_backend(spec, tmp_path)
    assert needle in str(e.value)
    assert "--simulate" in str(e.value)
    assert "H100-80GB" in str(e.value) or "MODEL:COUNT" in str(e.value)


def test_uuids_are_stable_per_node_and_index(tmp_path: Path) -> None:
    a = [g.uuid for g in sim(tmp_path).inventory()]
    again = [g.uuid for g in sim(tmp_path / "other").inventory()]
    elsewhere = [g.uuid for g in sim(tmp_path, node="n2").inventory()]
    assert a == again
    assert len(set(a)) == 3
    assert not set(a) & set(elsewhere)


def test_declared_memory_is_summed_per_gpu_for_live_pids_only(tmp_path: Path) -> None:
    b = sim(tmp_path)
    inv = b.inventory()
    with processes() as procs:
        env = {**b.job_env(), "CUDA_VISIBLE_DEVICES": inv[1].uuid}
        p1 = procs.sim_use(2048, env)
        p2 = procs.sim_use(1024, env, busy=True)
        assert wait_for(lambda: len(b.sample()[1].processes) == 2)
        s = b.sample()[1]
        assert s.memory_used_mib == 3072
        assert {p.pid: p.used_memory_mib for p in s.processes} == {p1.pid: 2048, p2.pid: 1024}
        assert s.utilization_pct == 100
        assert b.sample()[0].memory_used_mib == 0
        os.killpg(p2.pid, signal.SIGSTOP)  # a paused process is not busy
        assert wait_for(lambda: b.sample()[1].utilization_pct == 0)
        os.killpg(p2.pid, signal.SIGCONT)
        p1.kill()
        p1.wait()
        assert wait_for(lambda: b.sample()[1].memory_used_mib == 1024)
    # a declaration for a dead pid is ignored and cleaned up
    write_use(b.sim_dir, 2**22 + 12345, "0", 999, False)
    assert b.sample()[0].memory_used_mib == 0
    assert not (b.sim_dir / f"{2**22 + 12345}.json").exists()


def test_use_tool_declares_by_index_and_for_another_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpufleet.agent.backends.simulated import use

    b = sim(tmp_path)
    assert use.main(["--mib", "512", "--gpu", "2", "--pid", str(os.getpid()), "--sim-dir", str(b.sim_dir)]) == 0
    s = b.sample()
    assert [(p.pid, p.used_memory_mib) for p in s[2].processes] == [(os.getpid(), 512)]
    monkeypatch.delenv("GPUFLEET_SIM_DIR", raising=False)
    assert use.main(["--mib", "1"]) == 2  # no sim dir: a clear error, not a crash
    assert use.main(["--mib", "-1", "--sim-dir", str(b.sim_dir)]) == 2


def test_mig_mode_is_pending_until_reset_and_layout_persists(tmp_path: Path) -> None:
    b = sim(tmp_path)
    with pytest.raises(UnsupportedOperationError):
        b.set_mig_mode(2, True)  # L4
    b.set_mig_mode(0, True)
    g = b.inventory()[0]
    assert not g.mig_enabled and g.mig_enabled_pending
    with pytest.raises(FailedPreconditionError, match="pending a GPU reset"):
        b.apply_mig_layout(0, ["7g.80gb"])
    b.reset_gpu(0)
    devices = b.apply_mig_layout(0, ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"])
    assert sorted(d.profile for d in devices) == ["1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb"]
    restarted = sim(tmp_path)
    assert restarted.inventory()[0].mig_devices == tuple(devices)
    assert restarted.inventory()[0].mig_enabled


def test_relayout_keeps_requested_uuid(tmp_path: Path) -> None:
    b = sim(tmp_path)
    b.set_mig_mode(0, True)
    b.reset_gpu(0)
    first = b.apply_mig_layout(0, ["1g.10gb"] * 7)
    keep = first[5].uuid  # 1g.10gb at slice 5: a 4g.40gb (slices 0-3) fits beside it
    second = b.apply_mig_layout(0, ["4g.40gb", "1g.10gb", "1g.10gb", "1g.10gb"], keep_uuids=[keep])
    assert keep in [d.uuid for d in second]
    assert second[0].profile == "4g.40gb"
    with pytest.raises(InvalidInputError, match="without moving the kept slices"):
        # valid on an empty GPU, but the 2g.20gb would need slices 4-5 and slice 5 is kept
        b.apply_mig_layout(0, ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"], keep_uuids=[keep])


def test_xid_marks_unhealthy(tmp_path: Path) -> None:
    b = sim(tmp_path)
    b.inject_xid(1, 79)
    assert [(e.index, e.xid) for e in b.health_events()] == [(1, 79)]
    assert not b.inventory()[1].healthy and not b.sample()[1].healthy


def test_mig_groups_start_with_mig_mode_on_and_layouts_apply(tmp_path: Path) -> None:
    backend = create_backend("simulate:A100-80GB:2:mig,H100-80GB:1", tmp_path, node_name="n")
    gpus = backend.inventory()
    assert [g.mig_enabled for g in gpus] == [True, True, False]
    devices = backend.apply_mig_layout(0, ["3g.40gb", "3g.40gb"])
    assert sorted(d.profile for d in devices) == ["3g.40gb", "3g.40gb"]
    # what was persisted wins over the topology's starting point after a restart
    again = create_backend("simulate:A100-80GB:2:mig,H100-80GB:1", tmp_path, node_name="n")
    assert len(again.inventory()[0].mig_devices) == 2
