"""Typed identifiers used across gpufleet."""

from __future__ import annotations

import uuid
from typing import NewType

JobId = NewType("JobId", str)
NodeName = NewType("NodeName", str)
GpuUuid = NewType("GpuUuid", str)
InstanceId = NewType("InstanceId", str)
RequestId = NewType("RequestId", str)


def new_job_id() -> JobId:
    """A short, sortable-enough, unique job id (``j-`` + 12 hex digits)."""
    return JobId("j-" + uuid.uuid4().hex[:12])


def new_request_id() -> RequestId:
    return RequestId(uuid.uuid4().hex)
