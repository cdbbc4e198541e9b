"""A fake of the Azure Resource Manager Compute REST API (virtual machines), enough for gpufleet's provider.

``PUT`` (create or update) answers 201 with an ``Azure-AsyncOperation`` URL on this server; the operation is
``InProgress`` on its first poll and ``Succeeded`` (or ``Failed`` with an injected error code) on the next, so
the SDK's long-running-operation poller really polls here. ``DELETE`` answers 202 the same way. A VM whose
allocation failed stays listed with ``provisioningState: Failed``, as in Azure.
``fail_next_create(code)`` injects an asynchronous allocation error (e.g. ``AllocationFailed``);
``reject_next_create(status, code, message)`` a synchronous one (e.g. 409 ``OperationNotAllowed`` for quota).
"""

from __future__ import annotations

import itertools
import re
import threading
from typing import Any

from tests.fakes.http_server import JsonServer

_VMS = re.compile(
    r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Compute/virtualMachines(?:/([^/]+))?$", re.I
)
_OPS = re.compile(r"^/subscriptions/([^/]+)/providers/Microsoft\.Compute/locations/([^/]+)/operations/([^/]+)$", re.I)


def _error(status: int, code: str, message: str) -> tuple[int, Any, dict[str, str]]:
    return status, {"error": {"code": code, "message": message}}, {}


class FakeAzureCompute:
    def __init__(self, vm_sizes: set[str]) -> None:
        self.vm_sizes = vm_sizes
        self.vms: dict[tuple[str, str], dict[str, Any]] = {}  # (resource group lower, name) -> VM
        self.operations: dict[str, dict[str, Any]] = {}
        self.puts = 0
        self.polls = 0
        self._async_fail: list[str] = []
        self._sync_fail: list[tuple[int, str, str]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.http = JsonServer(self.route)

    def fail_next_create(self, code: str) -> None:
        self._async_fail.append(code)

    def reject_next_create(self, status: int, code: str, message: str) -> None:
        self._sync_fail.append((status, code, message))

    def route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            if m := _OPS.match(path):
                _sub, _location, op_id = m.groups()
                op = self.operations.get(op_id)
                if op is None:
                    return _error(404, "NotFound", f"operation {op_id} not found")
                self.polls += 1
                op["polls"] += 1
                if op["polls"] < 2:
                    return 200, {"name": op_id, "status": "InProgress"}, {"Retry-After": "0"}
                if op["error"]:
                    vm = self.vms.get(op["vm"])
                    if vm is not None:
                        vm["properties"]["provisioningState"] = "Failed"
                    return (
                        200,
                        {
                            "name": op_id,
                            "status": "Failed",
                            "error": {"code": op["error"], "message": f"fake: {op['error']}"},
                        },
                        {},
                    )
                if op["kind"] == "delete":
                    self.vms.pop(op["vm"], None)
                else:
                    self.vms[op["vm"]]["properties"]["provisioningState"] = "Succeeded"
                return 200, {"name": op_id, "status": "Succeeded"}, {}
            if m := _VMS.match(path):
                sub, rg, name = m.groups()
                key = (rg.lower(), name or "")
                if name is None and method == "GET":
                    items = [v for (g, _), v in self.vms.items() if g == rg.lower()]
                    return 200, {"value": items}, {}
                if method == "GET":
                    vm = self.vms.get(key)
                    return (200, vm, {}) if vm else _error(404, "ResourceNotFound", f"VM {name} not found")
                if method == "PUT":
                    return self._put(sub, rg, name or "", body)
                if method == "DELETE":
                    if key not in self.vms:
                        return 204, None, {}
                    self.vms[key]["properties"]["provisioningState"] = "Deleting"
                    return self._async(sub, self.vms[key]["location"], "delete", key, "", 202)
            return _error(404, "NotFound", f"no route {method} {path}")

    def _async(
        self, sub: str, location: str, kind: str, key: tuple[str, str], error: str, status: int, body: Any = None
    ) -> tuple[int, Any, dict[str, str]]:
        op_id = f"op-{next(self._ids)}"
        self.operations[op_id] = {"kind": kind, "vm": key, "error": error, "polls": 0}
        url = f"{self.http.url}/subscriptions/{sub}/providers/Microsoft.Compute/locations/{location}/operations/{op_id}?api-version=2024-11-01"
        return status, body, {"Azure-AsyncOperation": url, "Retry-After": "0"}

    def _put(self, sub: str, rg: str, name: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        self.puts += 1
        size = body.get("properties", {}).get("hardwareProfile", {}).get("vmSize", "")
        if size not in self.vm_sizes:
            return _error(400, "InvalidParameter", f"The value {size} provided for the VM size is not valid.")
        if self._sync_fail:
            return _error(*self._sync_fail.pop(0))
        key = (rg.lower(), name)
        vm = dict(body)
        vm.update(
            {
                "id": f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}",
                "name": name,
                "type": "Microsoft.Compute/virtualMachines",
            }
        )
        vm["properties"] = {
            **body.get("properties", {}),
            "provisioningState": "Creating",
            "vmId": f"vm-{next(self._ids)}",
        }
        vm["properties"]["timeCreated"] = "2026-11-22T18:00:00+00:00"
        self.vms[key] = vm
        error = self._async_fail.pop(0) if self._async_fail else ""
        return self._async(sub, vm["location"], "create", key, error, 201, vm)
