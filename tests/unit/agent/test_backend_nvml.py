"""NvmlBackend logic over FakeNvmlDriver replaying a recorded 8x H100 host (MIG on GPU 7)."""

from __future__ import annotations

from typing import Any

import pytest

from gpufleet.agent.backends.nvml import NvmlBackend
from gpufleet.agent.backends.nvml.fake_driver import FakeNvmlDriver
from gpufleet.common.errors import BackendError, FailedPreconditionError, InvalidInputError, UnsupportedOperationError
from tests.unit.agent.fixtures.procs import load_recording


@pytest.fixture
def rec() -> dict[str, Any]:
    return load_recording()


def backend(rec: dict[str, Any]) -> tuple[NvmlBackend, FakeNvmlDriver]:
    driver = FakeNvmlDriver(rec)
    return NvmlBackend(driver, node_name="dgx-h100-07", mps_binary="no-such-mps-binary"), driver


def test_inventory_maps_names_memory_numa_nvswitch_peers_and_mig(rec: dict[str, Any]) -> None:
    b, _ = backend(rec)
    inv = b.inventory()
    assert [g.index for g in inv] == list(range(8))
    assert {g.model for g in inv} == {"H100-80GB"}
    assert inv[0].uuid == rec["devices"][0]["uuid"]
    assert inv[0].product_name == "NVIDIA H100 80GB HBM3"
    assert inv[0].memory_mib == 81559
    assert [g.numa_node for g in inv] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert inv[2].nvlink_peers == (0, 1, 3, 4, 5, 6, 7)  # all behind NVSwitches
    assert all(g.mig_capable for g in inv)
    assert not inv[0].mig_enabled and inv[0].mig_devices == ()
    assert inv[7].mig_enabled and inv[7].mig_enabled_pending
    assert [(m.profile, m.start, m.gi_id) for m in inv[7].mig_devices] == [
        ("2g.20gb", 0, 5),
        ("1g.10gb", 2, 13),
        ("1g.10gb", 3, 14),
        ("3g.40gb", 4, 2),
    ]
    assert all(m.uuid.startswith("MIG-") for m in inv[7].mig_devices)
    assert not inv[0].mps_available  # no MPS control binary
    assert not inv[7].mps_available


def test_sample_reads_processes_utilisation_and_tolerates_unsupported_reads(rec: dict[str, Any]) -> None:
    b, _ = backend(rec)
    s = b.sample()
    assert s[0].utilization_pct == 97 and s[0].memory_utilization_pct == 61
    assert s[0].memory_used_mib == 42 * 1024 + 512
    assert s[0].temperature_c == 63 and s[0].power_mw == 612000
    assert {(p.pid, p.used_memory_mib, p.sm_util_pct) for p in s[0].processes} == {
        (41001, 30 * 1024, 71),
        (41002, 12 * 1024, 26),
    }
    assert s[6].ecc_errors == 0  # NOT_SUPPORTED reads as 0, the sample does not fail
    assert s[7].utilization_pct == 0  # MIG-enabled GPUs report no utilisation
    mig3g = next(m for m in b.inventory()[7].mig_devices if m.profile == "3g.40gb")
    assert [(p.pid, p.used_memory_mib, p.mig_uuid) for p in s[7].processes] == [(43007, 6 * 1024, mig3g.uuid)]
    # per-process utilisation samples are read incrementally: nothing new -> not sampled (-1)
    again = b.sample()
    assert {p.sm_util_pct for p in again[0].processes} == {-1}


def test_critical_xid_marks_gpu_unhealthy_but_application_xid_does_not(rec: dict[str, Any]) -> None:
    b, driver = backend(rec)
    events = b.health_events()
    assert [(e.index, e.xid, e.reason) for e in events] == [(5, 79, "XID 79")]
    inv = b.inventory()
    assert not inv[5].healthy and inv[5].health_reason == "XID 79"
    assert inv[2].healthy  # XID 13 is the application's fault
    assert not b.sample()[5].healthy
    assert b.health_events() == []
    driver.push_event(1, 0x2)
    assert [(e.index, e.reason) for e in b.health_events()] == [(1, "double-bit ECC error")]


def test_relayout_keeps_in_use_slice_and_its_uuid(rec: dict[str, Any]) -> None:
    b, driver = backend(rec)
    before = {m.profile + f"@{m.start}": m.uuid for m in b.inventory()[7].mig_devices}
    devices = b.apply_mig_layout(7, ["3g.40gb", "3g.40gb"], keep_uuids=[before["3g.40gb@4"]])
    assert [(m.profile, m.start) for m in devices] == [("3g.40gb", 0), ("3g.40gb", 4)]
    assert devices[1].uuid == before["3g.40gb@4"]
    assert devices[0].uuid not in before.values()
    assert "create_gi(7,9,0)" in driver.calls
    assert sum(c.startswith("destroy_gi(7,") for c in driver.calls) == 3
    assert [m.uuid for m in b.inventory()[7].mig_devices] == [m.uuid for m in devices]


def test_relayout_that_would_move_a_kept_slice_is_refused_without_changes(rec: dict[str, Any]) -> None:
    b, driver = backend(rec)
    one_g = next(m for m in b.inventory()[7].mig_devices if m.profile == "1g.10gb")
    with pytest.raises(InvalidInputError, match=r"4g\.40gb"):
        b.apply_mig_layout(7, ["4g.40gb", "1g.10gb"], keep_uuids=[one_g.uuid])  # 4g must start at 0..3
    assert driver.calls == []
    with pytest.raises(InvalidInputError, match="no MIG profile"):
        b.apply_mig_layout(7, ["5g.50gb"])


def test_mig_needs_mig_mode_and_mode_change_is_pending(rec: dict[str, Any]) -> None:
    b, driver = backend(rec)
    with pytest.raises(FailedPreconditionError, match="MIG mode is disabled on GPU 1"):
        b.apply_mig_layout(1, ["7g.80gb"])
    b.set_mig_mode(1, True)
    g = b.inventory()[1]
    assert not g.mig_enabled and g.mig_enabled_pending
    with pytest.raises(FailedPreconditionError, match="pending a GPU reset"):
        b.apply_mig_layout(1, ["7g.80gb"])
    assert driver.calls == ["set_mig_mode(1,1)"]


def test_non_mig_gpu_and_unknown_model(rec: dict[str, Any]) -> None:
    rec["devices"][0]["name"] = "NVIDIA L4"
    rec["devices"][0]["mig_mode"] = None
    b, _ = backend(rec)
    g = b.inventory()[0]
    assert g.model == "L4" and not g.mig_capable
    with pytest.raises(UnsupportedOperationError):
        b.set_mig_mode(0, True)
    rec["devices"][1]["name"] = "NVIDIA B999 Prototype"
    b2, _ = backend(rec)
    assert b2.inventory()[1].model == "B999-Prototype"


def test_no_driver_says_how_to_simulate(rec: dict[str, Any]) -> None:
    rec["init_error"] = 9
    with pytest.raises(BackendError, match="--simulate"):
        backend(rec)


def test_pynvml_driver_without_gpu_fails_with_simulate_hint(tmp_path: Any) -> None:
    from gpufleet.agent.backends.registry import create_backend

    try:
        import pynvml

        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this host has an NVIDIA driver")
    with pytest.raises(BackendError, match="--simulate"):
        create_backend("nvml", tmp_path)


def test_replays_answers_recorded_on_a_real_h100() -> None:
    """tests/unit/agent/fixtures/nvml_h100_recorded.json: `python -m gpufleet.agent.backends.nvml.record` on
    a cloud H100 (driver 580, MIG off, no NUMA or NVLink reported)."""
    rec = load_recording("nvml_h100_recorded.json")
    b, driver = backend(rec)
    [g] = b.inventory()
    assert (g.model, g.memory_mib, g.mig_capable, g.mig_enabled, g.numa_node) == ("H100-80GB", 81559, True, False, -1)
    assert g.uuid == rec["devices"][0]["uuid"] and g.nvlink_peers == ()
    [s] = b.sample()
    assert s.memory_total_mib == 81559 and s.processes == () and s.power_mw > 0
    assert b.health_events() == []
    b.set_mig_mode(0, True)
    assert b.inventory()[0].mig_enabled_pending and driver.calls == ["set_mig_mode(0,1)"]
