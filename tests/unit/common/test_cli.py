"""The CLI as a user runs it: a real subprocess, exit codes and messages."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GPUFLEET_COORDINATOR"}
    return subprocess.run(
        [sys.executable, "-m", "gpufleet.common.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


def test_validate_examples_ok() -> None:
    r = run("job", "validate", *[str(p) for p in sorted((ROOT / "examples").glob("*.yaml"))])
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(": ok") == 6


def test_validate_broken_exits_2_with_field_errors() -> None:
    r = run("job", "validate", str(ROOT / "tests/unit/common/specs/broken.yaml"))
    assert r.returncode == 2
    assert "resources.gpus:" in r.stderr and "placement.spot:" in r.stderr and "command:" in r.stderr


def test_unreachable_coordinator_names_address_and_what_to_check() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = run("job", "list", "--coordinator", f"127.0.0.1:{port}", "--timeout", "2")
    assert r.returncode == 1
    assert f"127.0.0.1:{port}" in r.stderr and "gpufleet coordinator" in r.stderr


def test_bad_coordinator_flag_exits_2() -> None:
    r = run("node", "list", "--coordinator", "nonsense")
    assert r.returncode == 2
    assert "--coordinator" in r.stderr


def test_unknown_command_and_help() -> None:
    assert run("frobnicate").returncode == 2
    r = run("--help")
    assert r.returncode == 0 and "coordinator" in r.stdout
