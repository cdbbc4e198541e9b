"""The configuration examples the README points at are valid, and a typo in them is named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def check(component: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "gpufleet.common.cli", component, "--config", str(config), "--check-config"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("component", ["coordinator", "agent"])
def test_example_config_is_valid(component: str) -> None:
    r = check(component, ROOT / "examples" / "config" / f"{component}.toml")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    ("component", "typo", "named"),
    [("coordinator", "[liveness]\nnode_timeout_s", "liveness.nodetimeout_s"), ("agent", "metrics_port", "metricsport")],
)
def test_typo_is_an_error_naming_the_key(tmp_path: Path, component: str, typo: str, named: str) -> None:
    text = (ROOT / "examples" / "config" / f"{component}.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(
        text.replace(typo, typo.replace("node_timeout_s", "nodetimeout_s").replace("metrics_port", "metricsport"), 1)
    )
    r = check(component, bad)
    assert r.returncode == 2
    assert named in r.stderr
