"""Coordinator configuration: file + env + flags, unknown keys named, bad flags exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.common.errors import InvalidInputError
from gpufleet.coordinator import cli
from gpufleet.coordinator.config import load_settings


def test_file_env_and_flags_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[liveness]\nnode_timeout_s = 4\n[server]\nadvertise = "10.0.0.1:7070"\n'
        "[scheduler.quotas.ml]\nguaranteed_milli = 8000\n"
    )
    monkeypatch.setenv("GPUFLEET_COORDINATOR__LIVENESS__NODE_TIMEOUT_S", "6")
    s = load_settings(cfg, server={"listen": "127.0.0.1:0"})
    assert s.liveness.node_timeout_s == 6
    assert s.server.advertise == "10.0.0.1:7070" and s.server.listen == "127.0.0.1:0"
    assert s.scheduler["quotas"]["ml"]["guaranteed_milli"] == 8000


def test_unknown_file_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[liveness]\nnode_timeout = 4\n")
    with pytest.raises(InvalidInputError, match=r"liveness\.node_timeout"):
        load_settings(cfg)


def test_unknown_env_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLEET_COORDINATOR__LIVENES__NODE_TIMEOUT_S", "4")
    with pytest.raises(InvalidInputError, match="GPUFLEET_COORDINATOR__LIVENES__NODE_TIMEOUT_S"):
        load_settings()


def test_bad_flags_exit_2_naming_the_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["--listen", "nowhere", "--check-config"]) == 2
    assert "--listen" in capsys.readouterr().err
    assert cli.main(["--store", "zookeeper://x", "--check-config"]) == 2
    assert "--store" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["--no-such-flag"])
    assert exc.value.code == 2


def test_unknown_quota_key_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[scheduler.quotas.ml]\nguaranted_milli = 8000\n")
    assert cli.main(["--config", str(cfg), "--check-config"]) == 2
    assert "scheduler.quotas.ml.guaranted_milli" in capsys.readouterr().err


def test_check_config_prints_the_result(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["--listen", "127.0.0.1:0", "--state-dir", str(tmp_path), "--check-config"]) == 0
    assert '"node_timeout_s"' in capsys.readouterr().out


AUTOSCALER_TOML = """
[autoscaler]
interval_s = 5
[[autoscaler.pools]]
name = "l4"
provider = "fake"
regions = ["local-a"]
instance_types = ["sim-l4x1"]
{extra}
[autoscaler.bootstrap]
coordinators = ["10.0.0.1:7070"]
"""


def test_autoscaler_section_is_validated(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(AUTOSCALER_TOML.format(extra=""))
    assert cli.main(["--config", str(cfg), "--check-config"]) == 0
    cfg.write_text(AUTOSCALER_TOML.format(extra="max_nodez = 3"))
    assert cli.main(["--config", str(cfg), "--check-config"]) == 2
    assert "autoscaler.pools.0.max_nodez" in capsys.readouterr().err
