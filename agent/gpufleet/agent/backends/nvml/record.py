"""Record a real host's NVML answers in the format FakeNvmlDriver replays (read-only: changes nothing).

    python -m gpufleet.agent.backends.nvml.record > host.json

Calls a device does not support are recorded as ``null`` (the fake then answers NOT_SUPPORTED).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from gpufleet.agent.backends.nvml.driver import NVML_ERROR_NOT_FOUND, Handle, NvmlError, PynvmlDriver
from gpufleet.common.gpu_models import MODELS, model_for_product_name

MAX_LINKS = 18


def _listed(call: Callable[[Handle], tuple[int, int]], h: Handle) -> list[int]:
    return list(call(h))


def _try(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except NvmlError:
        return None


def record(driver: PynvmlDriver) -> dict[str, Any]:
    driver.init()
    devices = []
    for i in range(driver.device_count()):
        h = driver.device_handle(i)
        mem = driver.memory_info(h)
        name = driver.name(h)
        links = []
        for link in range(MAX_LINKS):
            active = _try(partial(driver.nvlink_active, h, link))
            if active is None:
                break
            links.append(
                {
                    "active": active,
                    "remote_bus_id": _try(partial(driver.nvlink_remote_bus_id, h, link)) or "",
                    "remote_type": _try(partial(driver.nvlink_remote_type, h, link)) or 0,
                }
            )
        dev: dict[str, Any] = {
            "uuid": driver.uuid(h),
            "name": name,
            "memory_total": mem.total,
            "memory_used": mem.used,
            "utilization": _try(partial(_listed, driver.utilization, h)),
            "temperature": _try(partial(driver.temperature, h)),
            "power_mw": _try(partial(driver.power_usage_mw, h)),
            "ecc": _try(partial(driver.ecc_uncorrected_volatile, h)),
            "numa_node": _try(partial(driver.numa_node, h)),
            "pci_bus_id": _try(partial(driver.pci_bus_id, h)),
            "nvlinks": links,
            "mig_mode": _try(partial(_listed, driver.mig_mode, h)),
            "supported_events": _try(partial(driver.supported_events, h)) or 0,
            "processes": [
                {"pid": p.pid, "used_bytes": p.used_bytes} for p in (_try(partial(driver.compute_processes, h)) or [])
            ],
            "process_util": [
                {"pid": s.pid, "ts": s.timestamp, "sm": s.sm_util, "mem": s.mem_util}
                for s in (_try(partial(driver.process_utilization, h, 0)) or [])
            ],
        }
        model = MODELS.get(model_for_product_name(name))
        if model and model.mig_capable:
            profiles = {}
            for p in model.mig_profiles:
                info = _try(partial(driver.gi_profile_info, h, p.nvml_profile))
                if info is not None:
                    profiles[str(p.nvml_profile)] = {
                        "id": info.id,
                        "slice_count": info.slice_count,
                        "instance_count": info.instance_count,
                        "memory_mib": info.memory_mib,
                    }
            dev["gi_profiles"] = profiles
            dev["gpu_instances"] = _record_instances(driver, h, profiles)
        devices.append(dev)
    return {"driver_version": driver.driver_version(), "devices": devices, "events": []}


def _record_instances(driver: PynvmlDriver, h: Handle, profiles: dict[str, Any]) -> list[dict[str, Any]]:
    mode = _try(partial(driver.mig_mode, h))
    if not mode or mode[0] != 1:
        return []
    uuids: dict[tuple[int, int], str] = {}
    for i in range(driver.max_mig_devices(h)):
        try:
            mh = driver.mig_device_handle(h, i)
        except NvmlError as e:
            if e.code == NVML_ERROR_NOT_FOUND:
                continue
            raise
        uuids[(driver.gpu_instance_id(mh), driver.compute_instance_id(mh))] = driver.uuid(mh)
    out = []
    for p in profiles.values():
        for gi in driver.gpu_instances(h, p["id"], p["instance_count"]):
            info = driver.gpu_instance_info(gi)
            cis = [
                {"id": ci, "profile_id": 0, "uuid": u, "memory_total": p["memory_mib"] * 1024 * 1024, "processes": []}
                for (g, ci), u in uuids.items()
                if g == info.id
            ]
            out.append(
                {
                    "id": info.id,
                    "profile_id": info.profile_id,
                    "start": info.start,
                    "size": info.size,
                    "compute_instances": cis,
                }
            )
    return out


def main() -> int:
    json.dump(record(PynvmlDriver()), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
