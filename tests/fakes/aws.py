"""A moto EC2 server on loopback, plus an HTTP-level error injector for the real boto3 client.

moto never answers capacity or quota errors, so ``inject_error`` makes the client's next ``RunInstances`` get
the error response EC2 would send (XML body, HTTP status), parsed by botocore like a real one.
"""

from __future__ import annotations

import os

os.environ["MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION"] = "true"  # before moto is imported

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DUMMY_CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto's threaded server on 127.0.0.1 (free port); yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def inject_error(ec2_client: Any, code: str, status: int = 500, operation: str = "RunInstances") -> None:
    """Make the next ``operation`` call of this boto3 client answer an EC2 error ``code``."""
    from botocore.awsrequest import AWSResponse

    fired = False

    def before_send(request: Any, **_: Any) -> AWSResponse | None:
        nonlocal fired
        if fired:
            return None
        fired = True
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{code}</Code><Message>injected {code}</Message>"
            "</Error></Errors><RequestID>fake-request</RequestID></Response>"
        ).encode()
        return AWSResponse(request.url, status, {"Content-Type": "text/xml"}, _Raw(body))

    ec2_client.meta.events.register_first(f"before-send.ec2.{operation}", before_send)
