"""A fake of the Compute Engine v1 REST API (instances + zone operations), enough for gpufleet's GCP provider.

Paths and JSON follow the public API (camelCase): ``POST/GET .../zones/{zone}/instances``,
``GET/DELETE .../instances/{name}``, ``GET .../operations/{op}`` and ``POST .../operations/{op}/wait``.
Inserts honour ``requestId`` (same id -> same operation) and reject an existing name with 409. An insert's
operation starts RUNNING and is DONE on the next ``get``/``wait``. ``fail_next_insert(code)`` makes the next
insert's operation finish with that error code (e.g. ``ZONE_RESOURCE_POOL_EXHAUSTED``, ``QUOTA_EXCEEDED``).
"""

from __future__ import annotations

import itertools
import re
import threading
from typing import Any

from tests.fakes.http_server import JsonServer

_INSTANCES = re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances(?:/([^/]+))?$")
_OPERATION = re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/operations/([^/]+?)(/wait)?$")


def _error(status: int, reason: str, message: str) -> tuple[int, Any, dict[str, str]]:
    return (
        status,
        {"error": {"code": status, "message": message, "errors": [{"reason": reason, "message": message}]}},
        {},
    )


class FakeGce:
    def __init__(self, machine_types: set[str]) -> None:
        self.machine_types = machine_types
        self.instances: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.request_ids: dict[str, str] = {}
        self.inserts = 0
        self._fail: list[str] = []
        self._ids = itertools.count(1000)
        self._lock = threading.Lock()
        self.http = JsonServer(self.route)

    def fail_next_insert(self, code: str) -> None:
        self._fail.append(code)

    # ------------------------------------------------------------------ routing
    def route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            if m := _INSTANCES.match(path):
                project, zone, name = m.groups()
                if method == "POST" and name is None:
                    return self._insert(project, zone, body, (query.get("requestId") or [""])[0])
                if method == "GET" and name is None:
                    items = [i for (p, z, _), i in self.instances.items() if p == project and z == zone]
                    return 200, {"kind": "compute#instanceList", "items": items}, {}
                if method == "GET":
                    inst = self.instances.get((project, zone, name))
                    return (200, inst, {}) if inst else _error(404, "notFound", f"instance {name} not found")
                if method == "DELETE":
                    return self._delete(project, zone, name)
            if m := _OPERATION.match(path):
                _project, _zone, op_name, _wait = m.groups()
                op = self.operations.get(op_name)
                if op is None:
                    return _error(404, "notFound", f"operation {op_name} not found")
                op["status"] = "DONE"
                return 200, op, {}
            return _error(404, "notFound", f"no route {method} {path}")

    def _operation(self, project: str, zone: str, kind: str, target: str, error_code: str = "") -> dict[str, Any]:
        name = f"operation-{next(self._ids)}"
        op: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(next(self._ids)),
            "name": name,
            "operationType": kind,
            "status": "RUNNING",
            "zone": f"https://compute.googleapis.com/compute/v1/projects/{project}/zones/{zone}",
            "targetLink": target,
            "progress": 0,
        }
        if error_code:
            op["error"] = {"errors": [{"code": error_code, "message": f"fake: {error_code}"}]}
            op["httpErrorStatusCode"] = 503 if "EXHAUSTED" in error_code else 403
            op["httpErrorMessage"] = error_code
        self.operations[name] = op
        return op

    def _insert(self, project: str, zone: str, body: Any, request_id: str) -> tuple[int, Any, dict[str, str]]:
        self.inserts += 1
        if request_id and request_id in self.request_ids:
            return 200, self.operations[self.request_ids[request_id]], {}
        name = body.get("name", "")
        mt = body.get("machineType", "").rsplit("/", 1)[-1]
        if mt not in self.machine_types:
            return _error(
                400, "invalid", f"Invalid value for field 'resource.machineType': '{mt}'. Machine type does not exist."
            )
        if (project, zone, name) in self.instances:
            return _error(
                409, "alreadyExists", f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists"
            )
        target = f"https://compute.googleapis.com/compute/v1/projects/{project}/zones/{zone}/instances/{name}"
        if self._fail:
            op = self._operation(project, zone, "insert", target, self._fail.pop(0))
        else:
            op = self._operation(project, zone, "insert", target)
            inst = dict(body)
            inst.update(
                {
                    "kind": "compute#instance",
                    "id": str(next(self._ids)),
                    "status": "RUNNING",
                    "zone": f"https://compute.googleapis.com/compute/v1/projects/{project}/zones/{zone}",
                    "selfLink": target,
                    "creationTimestamp": "2026-11-22T10:00:00.000-08:00",
                    "networkInterfaces": [{"networkIP": f"10.0.0.{len(self.instances) % 250 + 2}"}],
                }
            )
            self.instances[(project, zone, name)] = inst
        if request_id:
            self.request_ids[request_id] = op["name"]
        return 200, op, {}

    def _delete(self, project: str, zone: str, name: str) -> tuple[int, Any, dict[str, str]]:
        if self.instances.pop((project, zone, name), None) is None:
            return _error(
                404, "notFound", f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found"
            )
        op = self._operation(project, zone, "delete", name)
        return 200, op, {}
