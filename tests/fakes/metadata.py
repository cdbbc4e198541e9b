"""Fake cloud metadata services on 127.0.0.1: AWS IMDSv2, GCP metadata server, Azure Scheduled Events.

Set the interruption state with ``aws_action``, ``aws_rebalance``, ``gcp_preempted``, ``azure_events``; every
request is recorded in ``requests`` (method, path, lower-cased headers) so tests can check IMDSv2 tokens and headers.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.http_server import LoopbackHttpServer

TOKEN = "fake-imds-token"


class FakeMetadata(LoopbackHttpServer):
    def __init__(self) -> None:
        self.aws_action: dict[str, str] | None = None
        self.aws_rebalance: dict[str, str] | None = None
        self.gcp_preempted = False
        self.azure_events: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}  # header names are case-insensitive
                fake.requests.append((self.command, self.path, headers))
                status, body = fake.route(self.command, self.path, headers)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = _answer  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                return None

        super().__init__(Handler)

    def route(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        if path == "/latest/api/token":
            if method != "PUT" or "x-aws-ec2-metadata-token-ttl-seconds" not in headers:
                return 400, b""
            return 200, TOKEN.encode()
        if path.startswith("/latest/meta-data/"):
            if headers.get("x-aws-ec2-metadata-token") != TOKEN:
                return 401, b""
            if path.endswith("/spot/instance-action") and self.aws_action:
                return 200, json.dumps(self.aws_action).encode()
            if path.endswith("/events/recommendations/rebalance") and self.aws_rebalance:
                return 200, json.dumps(self.aws_rebalance).encode()
            return 404, b""
        if path == "/computeMetadata/v1/instance/preempted":
            if headers.get("metadata-flavor") != "Google":
                return 403, b""
            return 200, b"TRUE" if self.gcp_preempted else b"FALSE"
        if path.startswith("/metadata/scheduledevents"):
            if headers.get("metadata") != "true":
                return 400, b""
            return 200, json.dumps(
                {"DocumentIncarnation": len(self.azure_events), "Events": self.azure_events}
            ).encode()
        return 404, b""
