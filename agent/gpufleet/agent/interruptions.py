"""Cloud interruption watchers for the agent: an async iterator of ``SpotInterruption`` events.

    async for event in watch_interruptions(InterruptionSettings(provider="auto")):
        await send(AgentEvent(spot_interruption=event))      # the daemon forwards it to the coordinator

Which cloud: ``provider`` from configuration (``aws``, ``gcp``, ``azure``, ``none``) or ``auto``, which decides
ONLY from local DMI evidence under ``/sys/class/dmi/id`` (``sys_vendor``, ``bios_vendor``, ``product_name``,
``chassis_asset_tag``) and never probes the network. With no cloud known, the iterator ends at once and no
request is ever made. Every metadata endpoint is configurable, so tests point them at fakes on 127.0.0.1.

Signals watched (each reported once):

* AWS (IMDSv2: a session token from ``PUT /latest/api/token``): ``/latest/meta-data/spot/instance-action``
  (kind ``terminate``/``stop``/``hibernate``, deadline from its ``time``) and
  ``/latest/meta-data/events/recommendations/rebalance`` (kind ``rebalance``: elevated risk, no deadline).
* GCP: ``/computeMetadata/v1/instance/preempted`` = ``TRUE`` (kind ``preempt``; about 30 s notice).
* Azure: Scheduled Events ``/metadata/scheduledevents`` with ``EventType`` ``Preempt`` or ``Terminate``
  (kind ``preempt``/``terminate``, deadline from ``NotBefore``); the event is acknowledged only by the drain.

An unreachable metadata service is logged and polled again; it never stops the agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol

from gpufleet.proto.v1 import agent_pb2 as apb

log = logging.getLogger(__name__)

AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"  # Azure VMs' chassis asset tag
GCP_NOTICE_MS = 30_000


@dataclass(frozen=True, slots=True)
class InterruptionSettings:
    provider: str = "auto"  # aws | gcp | azure | none | auto (local DMI evidence only)
    aws_endpoint: str = "http://169.254.169.254"
    gcp_endpoint: str = "http://metadata.google.internal"
    azure_endpoint: str = "http://169.254.169.254"
    dmi_dir: Path = Path("/sys/class/dmi/id")
    poll_interval_s: float = 5.0
    request_timeout_s: float = 2.0


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def detect_cloud(dmi_dir: Path) -> str | None:
    """The cloud this host runs in, from local DMI files only; None when there is no evidence."""
    vendor = _read(dmi_dir / "sys_vendor")
    bios = _read(dmi_dir / "bios_vendor")
    product = _read(dmi_dir / "product_name")
    bios_version = _read(dmi_dir / "bios_version").lower()
    if "Amazon EC2" in (vendor, bios) or "amazon" in bios_version:
        return "aws"
    if vendor == "Google" or product == "Google Compute Engine":
        return "gcp"
    if vendor == "Microsoft Corporation" and _read(dmi_dir / "chassis_asset_tag") == AZURE_ASSET_TAG:
        return "azure"
    return None


class _Http:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def request(self, method: str, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        req = urllib.request.Request(url, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as e:
            return int(e.code), b""

    async def __call__(self, method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        return await asyncio.to_thread(self.request, method, url, headers or {})


class Watcher(Protocol):
    provider: str

    async def poll(self) -> list[apb.SpotInterruption]: ...


def _iso_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


class AwsWatcher:
    provider = "aws"

    def __init__(self, settings: InterruptionSettings) -> None:
        self.base = settings.aws_endpoint.rstrip("/")
        self.http = _Http(settings.request_timeout_s)
        self._token = ""
        self._token_expires = 0.0

    async def _get(self, path: str) -> tuple[int, bytes]:
        if not self._token or time.monotonic() >= self._token_expires:
            status, body = await self.http(
                "PUT", f"{self.base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
            )
            if status != 200:
                return status, b""
            self._token, self._token_expires = body.decode().strip(), time.monotonic() + 21000
        status, body = await self.http("GET", f"{self.base}{path}", {"X-aws-ec2-metadata-token": self._token})
        if status == 401:  # token expired early: fetch a new one next time
            self._token = ""
        return status, body

    async def poll(self) -> list[apb.SpotInterruption]:
        out = []
        status, body = await self._get("/latest/meta-data/spot/instance-action")
        if status == 200 and body:
            doc = json.loads(body)
            out.append(
                apb.SpotInterruption(
                    provider="aws",
                    kind=str(doc.get("action", "terminate")),
                    deadline_ms=_iso_ms(doc["time"]),
                    detail=body.decode(),
                )
            )
        status, body = await self._get("/latest/meta-data/events/recommendations/rebalance")
        if status == 200 and body:
            out.append(apb.SpotInterruption(provider="aws", kind="rebalance", detail=body.decode()))
        return out


class GcpWatcher:
    provider = "gcp"

    def __init__(self, settings: InterruptionSettings) -> None:
        self.base = settings.gcp_endpoint.rstrip("/")
        self.http = _Http(settings.request_timeout_s)

    async def poll(self) -> list[apb.SpotInterruption]:
        status, body = await self.http(
            "GET", f"{self.base}/computeMetadata/v1/instance/preempted", {"Metadata-Flavor": "Google"}
        )
        if status == 200 and body.strip().upper() == b"TRUE":
            deadline = int(time.time() * 1000) + GCP_NOTICE_MS
            return [
                apb.SpotInterruption(
                    provider="gcp", kind="preempt", deadline_ms=deadline, detail="instance/preempted=TRUE"
                )
            ]
        return []


class AzureWatcher:
    provider = "azure"
    KINDS = {"Preempt": "preempt", "Terminate": "terminate"}

    def __init__(self, settings: InterruptionSettings) -> None:
        self.base = settings.azure_endpoint.rstrip("/")
        self.http = _Http(settings.request_timeout_s)

    async def poll(self) -> list[apb.SpotInterruption]:
        status, body = await self.http(
            "GET", f"{self.base}/metadata/scheduledevents?api-version=2020-07-01", {"Metadata": "true"}
        )
        if status != 200 or not body:
            return []
        out = []
        for ev in json.loads(body).get("Events", []):
            kind = self.KINDS.get(str(ev.get("EventType", "")))
            if kind is None:
                continue
            not_before = str(ev.get("NotBefore", ""))
            deadline = int(parsedate_to_datetime(not_before).timestamp() * 1000) if not_before else 0
            out.append(
                apb.SpotInterruption(
                    provider="azure", kind=kind, deadline_ms=deadline, detail=f"EventId={ev.get('EventId', '')}"
                )
            )
        return out


WATCHERS: dict[str, type[AwsWatcher] | type[GcpWatcher] | type[AzureWatcher]] = {
    "aws": AwsWatcher,
    "gcp": GcpWatcher,
    "azure": AzureWatcher,
}


def make_watcher(settings: InterruptionSettings) -> Watcher | None:
    """The watcher for the configured (or locally evident) cloud; None: not in a cloud we know, or ``none``."""
    provider = settings.provider
    if provider == "none":
        return None
    if provider == "auto":
        detected = detect_cloud(settings.dmi_dir)
        if detected is None:
            return None
        provider = detected
    cls = WATCHERS.get(provider)
    if cls is None:
        raise ValueError(f"interruptions.provider: {provider!r} is not one of auto, none, {', '.join(WATCHERS)}")
    return cls(settings)


async def watch_interruptions(settings: InterruptionSettings) -> AsyncIterator[apb.SpotInterruption]:
    """Yield each interruption signal once, polling every ``poll_interval_s``, until cancelled."""
    watcher = make_watcher(settings)
    if watcher is None:
        return
    seen: set[tuple[str, str, int]] = set()
    while True:
        try:
            events = await watcher.poll()
        except (OSError, ValueError, KeyError) as e:  # unreachable service, malformed answer: try again later
            log.debug("interruption watcher (%s): %s", watcher.provider, e)
            events = []
        for ev in events:
            key = (ev.kind, ev.detail if ev.kind != "preempt" else "", ev.deadline_ms if ev.kind != "preempt" else 0)
            if key not in seen:
                seen.add(key)
                yield ev
        await asyncio.sleep(settings.poll_interval_s)
