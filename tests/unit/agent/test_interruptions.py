"""Cloud interruption watchers against fake metadata services on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gpufleet.agent.interruptions import (
    AZURE_ASSET_TAG,
    InterruptionSettings,
    detect_cloud,
    make_watcher,
    watch_interruptions,
)
from gpufleet.proto.v1 import agent_pb2 as apb
from tests.fakes.metadata import FakeMetadata


@pytest.fixture
def meta() -> Iterator[FakeMetadata]:
    m = FakeMetadata().start()
    try:
        yield m
    finally:
        m.stop()


def _dmi(tmp_path: Path, **files: str) -> Path:
    for name, value in files.items():
        (tmp_path / name).write_text(value + "\n")
    return tmp_path


def _settings(meta: FakeMetadata, provider: str, dmi: Path | None = None) -> InterruptionSettings:
    return InterruptionSettings(
        provider=provider,
        aws_endpoint=meta.url,
        gcp_endpoint=meta.url,
        azure_endpoint=meta.url,
        dmi_dir=dmi or Path("/nonexistent"),
        poll_interval_s=0.02,
    )


async def _first(it: AsyncIterator[apb.SpotInterruption], timeout: float = 5) -> apb.SpotInterruption:
    return await asyncio.wait_for(anext(it), timeout)


def test_detects_the_cloud_from_local_dmi_only(tmp_path: Path) -> None:
    for d in "agzm":
        (tmp_path / d).mkdir()
    assert detect_cloud(_dmi(tmp_path / "a", sys_vendor="Amazon EC2")) == "aws"
    assert detect_cloud(_dmi(tmp_path / "g", sys_vendor="Google", product_name="Google Compute Engine")) == "gcp"
    assert (
        detect_cloud(_dmi(tmp_path / "z", sys_vendor="Microsoft Corporation", chassis_asset_tag=AZURE_ASSET_TAG))
        == "azure"
    )
    assert detect_cloud(_dmi(tmp_path / "m", sys_vendor="Dell Inc.")) is None
    assert detect_cloud(tmp_path / "missing") is None


async def test_no_cloud_evidence_means_no_watching_and_no_requests(meta: FakeMetadata, tmp_path: Path) -> None:
    dmi = _dmi(tmp_path, sys_vendor="Supermicro")
    assert make_watcher(_settings(meta, "auto", dmi)) is None
    events = [e async for e in watch_interruptions(_settings(meta, "auto", dmi))]
    assert events == [] and meta.requests == []
    assert make_watcher(_settings(meta, "none")) is None


async def test_aws_spot_instance_action_with_imdsv2_token(meta: FakeMetadata, tmp_path: Path) -> None:
    dmi = _dmi(tmp_path, sys_vendor="Amazon EC2")
    it = watch_interruptions(_settings(meta, "auto", dmi))
    meta.aws_action = {"action": "terminate", "time": "2026-11-22T18:30:00Z"}
    ev = await _first(it)
    assert (ev.provider, ev.kind) == ("aws", "terminate")
    assert ev.deadline_ms == 1795372200000
    assert any(m == "PUT" and p == "/latest/api/token" for m, p, _ in meta.requests)
    assert all(
        h.get("x-aws-ec2-metadata-token") == "fake-imds-token"
        for m, p, h in meta.requests
        if p.startswith("/latest/meta")
    )
    meta.aws_rebalance = {"noticeTime": "2026-11-22T18:20:00Z"}
    ev2 = await _first(it)
    assert ev2.kind == "rebalance"
    await it.aclose()


async def test_gcp_preempted_is_reported_once(meta: FakeMetadata) -> None:
    it = watch_interruptions(_settings(meta, "gcp"))
    meta.gcp_preempted = True
    ev = await _first(it)
    assert (ev.provider, ev.kind) == ("gcp", "preempt") and ev.deadline_ms > 0
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(it), 0.2)  # the same signal is not repeated
    await it.aclose()


async def test_azure_scheduled_preempt_event(meta: FakeMetadata) -> None:
    it = watch_interruptions(_settings(meta, "azure"))
    meta.azure_events = [
        {"EventId": "r1", "EventType": "Reboot", "NotBefore": "Sun, 22 Nov 2026 18:40:00 GMT"},
        {
            "EventId": "p1",
            "EventType": "Preempt",
            "ResourceType": "VirtualMachine",
            "NotBefore": "Sun, 22 Nov 2026 18:30:00 GMT",
        },
    ]
    ev = await _first(it)
    assert (ev.provider, ev.kind, ev.deadline_ms) == ("azure", "preempt", 1795372200000)
    assert "p1" in ev.detail
    await it.aclose()


async def test_unreachable_metadata_service_is_survived() -> None:
    settings = InterruptionSettings(
        provider="gcp", gcp_endpoint="http://127.0.0.1:9", poll_interval_s=0.02, request_timeout_s=0.2
    )
    it = watch_interruptions(settings)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(it), 0.3)
    await it.aclose()


def test_unknown_provider_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"interruptions\.provider"):
        make_watcher(InterruptionSettings(provider="ibm"))
