"""FakeNvmlDriver: replays recorded NVML answers (a JSON document) behind the NvmlDriver protocol.

A fake of the external NVML library, so NvmlBackend's logic can be tested without a GPU. The recording's
shape (``record.py`` writes it from a real host)::

    {"driver_version": "580.95.05",
     "init_error": 9,                                  # optional: nvmlInit fails with this NVML code
     "devices": [{"uuid": "GPU-...", "name": "NVIDIA H100 80GB HBM3", "memory_total": <bytes>,
                  "memory_used": <bytes>, "utilization": [gpu %, mem %], "temperature": 34, "power_mw": 71000,
                  "ecc": 0, "numa_node": 0, "pci_bus_id": "00000000:18:00.0",
                  "nvlinks": [{"remote_bus_id": "...", "remote_type": 2}, ...],   # 2 = NVSwitch
                  "mig_mode": [0, 0] | null,                     # null: NOT_SUPPORTED
                  "supported_events": 15,
                  "processes": [{"pid": 4242, "used_bytes": <bytes>}],
                  "process_util": [{"pid": 4242, "ts": <us>, "sm": 87, "mem": 40}],
                  "gi_profiles": {"0": {"id": 19, "slice_count": 1, "instance_count": 7, "memory_mib": 9984}, ...},
                  "gpu_instances": [{"id": 1, "profile_id": 9, "start": 0, "size": 4,
                                     "compute_instances": [{"id": 0, "profile_id": 2, "uuid": "MIG-...",
                                                            "memory_total": <bytes>, "processes": [...]}]}]}],
     "events": [{"device": 5, "type": 8, "data": 79}]}

A value of ``null`` for a field makes that call fail with NVML_ERROR_NOT_SUPPORTED. MIG instances can be
created and destroyed; the fake keeps them in memory (placement overlaps are refused like NVML does).
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from gpufleet.agent.backends.nvml.driver import (
    NVML_ERROR_IN_USE,
    NVML_ERROR_INSUFFICIENT_SIZE,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_TIMEOUT,
    CiProfileInfo,
    EventData,
    GiInfo,
    GiProfileInfo,
    Handle,
    MemoryInfo,
    NvmlError,
    ProcessInfo,
    ProcessUtil,
)

CI_SLICES = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7, 5: 8, 6: 6}


def _mig_uuid(gpu_uuid: str, gi: int, ci: int) -> str:
    h = hashlib.sha256(f"{gpu_uuid}/{gi}/{ci}".encode()).hexdigest()
    return f"MIG-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


class FakeNvmlDriver:
    def __init__(self, recording: dict[str, Any]) -> None:
        self.rec = copy.deepcopy(recording)
        self.devices: list[dict[str, Any]] = self.rec["devices"]
        self.events: list[dict[str, Any]] = list(self.rec.get("events", []))
        self.calls: list[str] = []  # names of mutating calls, for tests
        self.fail_next: dict[str, int] = {}  # call name -> NVML code its next call fails with (tests)
        self.initialized = False

    # ------------------------------------------------------------------ helpers

    def _field(self, dev: dict[str, Any], key: str) -> Any:
        if key not in dev or dev[key] is None:
            raise NvmlError(NVML_ERROR_NOT_SUPPORTED, f"{key} not supported")
        return dev[key]

    def _dev(self, h: Handle) -> dict[str, Any]:
        dev: dict[str, Any] = self.devices[h[1]]
        return dev

    def _gi(self, h: Handle) -> dict[str, Any]:
        for gi in self._dev(h).get("gpu_instances") or []:
            if gi["id"] == h[2]:
                return gi  # type: ignore[no-any-return]
        raise NvmlError(NVML_ERROR_NOT_FOUND, f"GPU instance {h[2]} not found")

    def _mig_list(self, dev: dict[str, Any]) -> list[tuple[int, int]]:
        return sorted((gi["id"], ci["id"]) for gi in dev.get("gpu_instances") or [] for ci in gi["compute_instances"])

    def _ci(self, h: Handle) -> dict[str, Any]:
        gi = self._gi(("gi", h[1], h[2]))
        for ci in gi["compute_instances"]:
            if ci["id"] == h[3]:
                return ci  # type: ignore[no-any-return]
        raise NvmlError(NVML_ERROR_NOT_FOUND, f"compute instance {h[3]} not found")

    # ------------------------------------------------------------------ NvmlDriver

    def init(self) -> None:
        if self.rec.get("init_error"):
            raise NvmlError(int(self.rec["init_error"]), "Driver Not Loaded")
        self.initialized = True

    def shutdown(self) -> None:
        self.initialized = False

    def driver_version(self) -> str:
        return str(self.rec.get("driver_version", ""))

    def device_count(self) -> int:
        return len(self.devices)

    def device_handle(self, index: int) -> Handle:
        if not 0 <= index < len(self.devices):
            raise NvmlError(NVML_ERROR_INVALID_ARGUMENT, "bad index")
        return ("dev", index)

    def uuid(self, h: Handle) -> str:
        if h[0] == "mig":
            return str(self._ci(h)["uuid"])
        return str(self._dev(h)["uuid"])

    def name(self, h: Handle) -> str:
        return str(self._dev(h)["name"])

    def memory_info(self, h: Handle) -> MemoryInfo:
        code = self.fail_next.pop("memory_info", 0)
        if code:
            raise NvmlError(code, "injected failure")
        if h[0] == "mig":
            ci = self._ci(h)
            used = sum(p["used_bytes"] or 0 for p in ci.get("processes", []))
            return MemoryInfo(int(ci["memory_total"]), used)
        d = self._dev(h)
        return MemoryInfo(int(d["memory_total"]), int(d["memory_used"]))

    def utilization(self, h: Handle) -> tuple[int, int]:
        u = self._field(self._dev(h), "utilization")
        return int(u[0]), int(u[1])

    def compute_processes(self, h: Handle) -> list[ProcessInfo]:
        procs = self._ci(h).get("processes", []) if h[0] == "mig" else self._field(self._dev(h), "processes")
        return [ProcessInfo(int(p["pid"]), p["used_bytes"]) for p in procs]

    def process_utilization(self, h: Handle, since_us: int) -> list[ProcessUtil]:
        samples = [s for s in self._field(self._dev(h), "process_util") if s["ts"] > since_us]
        if not samples:
            raise NvmlError(NVML_ERROR_NOT_FOUND, "no samples since the timestamp")
        return [ProcessUtil(int(s["pid"]), int(s["ts"]), int(s["sm"]), int(s["mem"])) for s in samples]

    def temperature(self, h: Handle) -> int:
        return int(self._field(self._dev(h), "temperature"))

    def power_usage_mw(self, h: Handle) -> int:
        return int(self._field(self._dev(h), "power_mw"))

    def ecc_uncorrected_volatile(self, h: Handle) -> int:
        return int(self._field(self._dev(h), "ecc"))

    def numa_node(self, h: Handle) -> int:
        return int(self._field(self._dev(h), "numa_node"))

    def pci_bus_id(self, h: Handle) -> str:
        return str(self._field(self._dev(h), "pci_bus_id"))

    def _link(self, h: Handle, link: int) -> dict[str, Any]:
        links = self._field(self._dev(h), "nvlinks")
        if link >= len(links):
            raise NvmlError(NVML_ERROR_INVALID_ARGUMENT, f"no NVLink {link}")
        return links[link]  # type: ignore[no-any-return]

    def nvlink_active(self, h: Handle, link: int) -> bool:
        return bool(self._link(h, link).get("active", True))

    def nvlink_remote_bus_id(self, h: Handle, link: int) -> str:
        return str(self._link(h, link)["remote_bus_id"])

    def nvlink_remote_type(self, h: Handle, link: int) -> int:
        return int(self._link(h, link).get("remote_type", 0))

    def mig_mode(self, h: Handle) -> tuple[int, int]:
        m = self._field(self._dev(h), "mig_mode")
        return int(m[0]), int(m[1])

    def set_mig_mode(self, h: Handle, enabled: bool) -> int:
        d = self._dev(h)
        m = self._field(d, "mig_mode")
        if d.get("processes"):
            raise NvmlError(NVML_ERROR_IN_USE, "GPU in use")
        self.calls.append(f"set_mig_mode({h[1]},{int(enabled)})")
        d["mig_mode"] = [m[0], int(enabled)]  # takes effect after a reset
        return 0

    def max_mig_devices(self, h: Handle) -> int:
        return 7 if self._dev(h).get("mig_mode") else 0

    def mig_device_handle(self, h: Handle, index: int) -> Handle:
        migs = self._mig_list(self._dev(h))
        if index >= len(migs):
            raise NvmlError(NVML_ERROR_NOT_FOUND, "no MIG device at that index")
        gi, ci = migs[index]
        return ("mig", h[1], gi, ci)

    def gpu_instance_id(self, mig: Handle) -> int:
        return int(mig[2])

    def compute_instance_id(self, mig: Handle) -> int:
        return int(mig[3])

    def gi_profile_info(self, h: Handle, profile: int) -> GiProfileInfo:
        p = (self._dev(h).get("gi_profiles") or {}).get(str(profile))
        if p is None:
            raise NvmlError(NVML_ERROR_NOT_SUPPORTED, f"GI profile {profile} not supported")
        return GiProfileInfo(int(p["id"]), int(p["slice_count"]), int(p["instance_count"]), int(p["memory_mib"]))

    def gpu_instances(self, h: Handle, profile_id: int, max_count: int) -> list[Handle]:
        gis = [gi for gi in self._dev(h).get("gpu_instances") or [] if gi["profile_id"] == profile_id]
        if len(gis) > max_count:
            raise NvmlError(NVML_ERROR_INSUFFICIENT_SIZE, "array too small")
        return [("gi", h[1], gi["id"]) for gi in gis]

    def gpu_instance_info(self, gi: Handle) -> GiInfo:
        g = self._gi(gi)
        return GiInfo(int(g["id"]), int(g["profile_id"]), int(g["start"]), int(g["size"]))

    def create_gpu_instance(self, h: Handle, profile_id: int, start: int, size: int) -> Handle:
        d = self._dev(h)
        if not d.get("mig_mode") or d["mig_mode"][0] != 1:
            raise NvmlError(NVML_ERROR_NOT_SUPPORTED, "MIG mode is off")
        gis = d.setdefault("gpu_instances", [])
        used = {s for gi in gis for s in range(gi["start"], gi["start"] + gi["size"])}
        if used.intersection(range(start, start + size)):
            raise NvmlError(NVML_ERROR_INSUFFICIENT_SIZE, "placement overlaps an existing GPU instance")
        gi_id = next(i for i in range(1, 64) if i not in {g["id"] for g in gis})
        gis.append({"id": gi_id, "profile_id": profile_id, "start": start, "size": size, "compute_instances": []})
        self.calls.append(f"create_gi({h[1]},{profile_id},{start})")
        return ("gi", h[1], gi_id)

    def destroy_gpu_instance(self, gi: Handle) -> None:
        g = self._gi(gi)
        if g["compute_instances"]:
            raise NvmlError(NVML_ERROR_IN_USE, "GPU instance has compute instances")
        d = self.devices[gi[1]]
        d["gpu_instances"] = [x for x in d["gpu_instances"] if x["id"] != g["id"]]
        self.calls.append(f"destroy_gi({gi[1]},{g['id']})")

    def ci_profile_info(self, gi: Handle, profile: int) -> CiProfileInfo:
        g = self._gi(gi)
        gi_profile = next(p for p in (self.devices[gi[1]]["gi_profiles"] or {}).values() if p["id"] == g["profile_id"])
        slices = CI_SLICES.get(profile)
        if slices is None or slices > gi_profile["slice_count"]:
            raise NvmlError(NVML_ERROR_NOT_SUPPORTED, f"CI profile {profile} not supported on this GI")
        return CiProfileInfo(profile, slices)

    def compute_instances(self, gi: Handle, profile_id: int, max_count: int) -> list[Handle]:
        cis = [c for c in self._gi(gi)["compute_instances"] if c["profile_id"] == profile_id]
        return [("ci", gi[1], gi[2], c["id"]) for c in cis[:max_count]]

    def create_compute_instance(self, gi: Handle, profile_id: int) -> Handle:
        g = self._gi(gi)
        d = self.devices[gi[1]]
        ci_id = len(g["compute_instances"])
        gi_profile = next(p for p in (d["gi_profiles"] or {}).values() if p["id"] == g["profile_id"])
        g["compute_instances"].append(
            {
                "id": ci_id,
                "profile_id": profile_id,
                "uuid": _mig_uuid(d["uuid"], g["id"], ci_id),
                "memory_total": gi_profile["memory_mib"] * 1024 * 1024,
                "processes": [],
            }
        )
        self.calls.append(f"create_ci({gi[1]},{g['id']},{profile_id})")
        return ("ci", gi[1], g["id"], ci_id)

    def destroy_compute_instance(self, ci: Handle) -> None:
        g = self._gi(("gi", ci[1], ci[2]))
        c = next(c for c in g["compute_instances"] if c["id"] == ci[3])
        if c.get("processes"):
            raise NvmlError(NVML_ERROR_IN_USE, "compute instance in use")
        g["compute_instances"] = [x for x in g["compute_instances"] if x["id"] != ci[3]]
        self.calls.append(f"destroy_ci({ci[1]},{ci[2]},{ci[3]})")

    def event_set_create(self) -> Handle:
        return ("events",)

    def supported_events(self, h: Handle) -> int:
        return int(self._dev(h).get("supported_events", 0))

    def register_events(self, h: Handle, mask: int, event_set: Handle) -> None:  # noqa: ARG002
        self._dev(h).setdefault("_registered", mask)

    def event_wait(self, event_set: Handle, timeout_ms: int) -> EventData:  # noqa: ARG002
        while self.events:
            e = self.events.pop(0)
            if self.devices[e["device"]].get("_registered", 0) & e["type"]:
                return EventData(("dev", e["device"]), int(e["type"]), int(e.get("data", 0)), 0xFFFFFFFF, 0xFFFFFFFF)
        raise NvmlError(NVML_ERROR_TIMEOUT, "Timeout")

    def event_set_free(self, event_set: Handle) -> None:  # noqa: ARG002
        return None

    def push_event(self, device: int, event_type: int, data: int = 0) -> None:
        """Inject a live event (tests)."""
        self.events.append({"device": device, "type": event_type, "data": data})
