"""The wheel a user installs carries every sub-package, the generated API and the console script."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_wheel_is_complete(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("gpufleet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "gpufleet/common/cli.py",
        "gpufleet/common/jobspec.py",
        "gpufleet/agent/backends/base.py",
        "gpufleet/coordinator/__init__.py",
        "gpufleet/proto/v1/jobs_pb2.py",
        "gpufleet/proto/v1/jobs_pb2.pyi",
        "gpufleet/proto/v1/agent.proto",
        "gpufleet/coordinator/autoscaler/data/gpufleet-agent.yaml.tmpl",
        "gpufleet/coordinator/autoscaler/data/gpufleet-agent.service",
        "gpufleet/coordinator/providers/aws/client.py",
    ):
        assert required in names, f"{required} missing from the wheel"
    assert not any(n.startswith("gpufleet/__init__") for n in names), "gpufleet must stay a namespace package"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "gpufleet = gpufleet.common.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
