"""cloud-init user-data: one document for every cloud, installing and starting an agent the real agent accepts."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from gpufleet.common.errors import InvalidInputError
from gpufleet.coordinator.autoscaler.bootstrap import DEFAULT_UNIT, BootstrapConfig, NodeFacts, render_user_data

FACTS = NodeFacts("gpu-0a1b2c3d4e5f", "gpu", "aws", "us-east-1", "g6.xlarge", True, "us-east-1a", {"team": "vision"})
CFG = BootstrapConfig(coordinators=("10.0.0.5:7070", "10.0.0.6:7070"), join_token="s3cret-token")


def _files(doc: str) -> dict[str, str]:
    assert doc.startswith("#cloud-config\n")
    data = yaml.safe_load(doc)
    return {f["path"]: f["content"] for f in data["write_files"]}


def test_user_data_writes_agent_config_and_unit_and_starts_the_agent() -> None:
    doc = render_user_data(CFG, FACTS)
    files = _files(doc)
    conf = tomllib.loads(files["/etc/gpufleet/agent.toml"])
    assert conf["name"] == "gpu-0a1b2c3d4e5f"
    assert conf["coordinators"] == ["10.0.0.5:7070", "10.0.0.6:7070"]
    assert conf["connection"]["join_token"] == "s3cret-token"
    assert (conf["provider"], conf["region"], conf["instance_type"], conf["spot"]) == (
        "aws",
        "us-east-1",
        "g6.xlarge",
        True,
    )
    assert conf["labels"] == {"gpufleet.io/pool": "gpu", "team": "vision"}
    assert files["/etc/systemd/system/gpufleet-agent.service"] == DEFAULT_UNIT.read_text()
    runcmd = yaml.safe_load(doc)["runcmd"]
    assert ["systemctl", "enable", "--now", "gpufleet-agent.service"] in runcmd
    assert any("pip install" in " ".join(c) and "gpufleet[nvml]" in " ".join(c) for c in runcmd)


def test_the_real_agent_accepts_the_rendered_config(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(_files(render_user_data(CFG, FACTS))["/etc/gpufleet/agent.toml"])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpufleet.common.cli",
            "agent",
            "--config",
            str(conf),
            "--state-dir",
            str(tmp_path / "s"),
            "--check-config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "gpu-0a1b2c3d4e5f" in proc.stdout


def test_missing_coordinators_or_shell_characters_are_rejected() -> None:
    with pytest.raises(InvalidInputError, match="coordinators"):
        render_user_data(BootstrapConfig(coordinators=()), FACTS)
    with pytest.raises(InvalidInputError, match="package"):
        render_user_data(BootstrapConfig(coordinators=("c:1",), package="gpufleet; rm -rf /"), FACTS)
