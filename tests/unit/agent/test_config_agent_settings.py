"""AgentSettings: TOML file < environment < flags; unknown keys and bad values are errors naming the field;
``gpufleet agent --check-config`` validates and exits, bad input exits 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.agent.cli import main
from gpufleet.agent.config import load_settings
from gpufleet.common.errors import InvalidInputError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("GPUFLEET_"):
            monkeypatch.delenv(k)


def test_file_env_and_flags_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(
        tmp_path,
        'name = "gpu-1"\ncoordinators = ["c1:7070"]\nregion = "us-east-1"\n'
        "[jobs]\ndefault_grace_period_s = 5\n[sharing]\nquantum_ms = 50\n",
    )
    s = load_settings(cfg)
    assert (s.name, s.coordinators, s.region, s.jobs.default_grace_period_s) == ("gpu-1", ["c1:7070"], "us-east-1", 5)
    assert s.sharing.quantum_ms == 50
    monkeypatch.setenv("GPUFLEET_AGENT__JOBS__DEFAULT_GRACE_PERIOD_S", "9")
    monkeypatch.setenv("GPUFLEET_AGENT__REGION", "eu-west-1")
    s = load_settings(cfg)
    assert (s.jobs.default_grace_period_s, s.region) == (9, "eu-west-1")
    s = load_settings(cfg, {"region": "ap-south-1", "coordinators": "a:1,b:2"})
    assert s.region == "ap-south-1" and s.coordinators == ["a:1", "b:2"]
    with pytest.raises(Exception, match="frozen"):
        s.name = "other"  # type: ignore[misc]


def test_coordinator_env_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLEET_COORDINATOR", "c1:7070, c2:7070")
    assert load_settings(None, {"name": "n1"}).coordinators == ["c1:7070", "c2:7070"]


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'coordinators = ["c:1"]\n[jobs]\ngrace = 3\n')
    with pytest.raises(InvalidInputError) as e:
        load_settings(cfg)
    assert e.value.problems[0].field == "jobs.grace" and "unknown setting" in str(e.value)
    cfg = write(tmp_path, 'coordinators = ["c:1"]\n[sharing]\nquantum = 3\n')
    with pytest.raises(InvalidInputError, match="quantum"):
        load_settings(cfg)


def test_unknown_environment_setting_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLEET_AGENT__COORDINATRS", "c:1")
    with pytest.raises(InvalidInputError, match="GPUFLEET_AGENT__COORDINATRS"):
        load_settings(None, {"name": "n1", "coordinators": "c:1"})
    monkeypatch.delenv("GPUFLEET_AGENT__COORDINATRS")
    monkeypatch.setenv("GPUFLEET_AGENT__JOBS__NOPE", "1")
    with pytest.raises(InvalidInputError, match=r"jobs\.nope"):
        load_settings(None, {"name": "n1", "coordinators": "c:1"})


def test_bad_values_name_the_field_and_fix(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as e:
        load_settings(None, {"name": "Bad_Name", "coordinators": "nohostport", "metrics_port": 70000})
    fields = {p.field for p in e.value.problems}
    assert fields == {"name", "coordinators", "metrics_port"}
    assert "--coordinator" in str(e.value)
    with pytest.raises(InvalidInputError, match="no coordinator address"):
        load_settings(None, {"name": "n1"})
    with pytest.raises(InvalidInputError, match="not valid TOML"):
        load_settings(write(tmp_path, "name = \n"))


def test_cli_check_config_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "s")
    assert (
        main(["--coordinator", "c:1", "--name", "n1", "--simulate", "L4:2", "--state-dir", state, "--check-config"])
        == 0
    )
    out = capsys.readouterr()
    assert '"gpu_backend": "simulate:L4:2"' in out.out and "configuration OK" in out.err
    assert main(["--coordinator", "c:1", "--name", "n1", "--simulate", "NOPE:2", "--check-config"]) == 2
    assert "--simulate" in capsys.readouterr().err
    assert main(["--coordinator", "c:1", "--label", "novalue", "--check-config"]) == 2
    assert "--label" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--no-such-flag"])
    assert exit_.value.code == 2
    cfg = write(tmp_path, 'coordinators = ["c:1"]\ntypo_key = 1\n')
    assert main(["--config", str(cfg), "--check-config"]) == 2
    assert "typo_key" in capsys.readouterr().err


def test_interruptions_section(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'coordinators = ["c:1"]\n[interruptions]\nprovider = "aws"\ndmi_dir = "/x"\n')
    s = load_settings(cfg)
    assert s.interruptions.provider == "aws" and s.interruptions.dmi_dir == Path("/x")
    with pytest.raises(InvalidInputError, match="provider 'ibm'"):
        load_settings(write(tmp_path, 'coordinators = ["c:1"]\n[interruptions]\nprovider = "ibm"\n'))
    with pytest.raises(InvalidInputError, match="pol_interval_s"):
        load_settings(write(tmp_path, 'coordinators = ["c:1"]\n[interruptions]\npol_interval_s = 1\n'))


def test_metrics_port_in_use_exits_2_naming_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        argv = ["--coordinator", "127.0.0.1:9", "--name", "n1", "--simulate", "L4:1", "--metrics-port", port]
        cfg = write(tmp_path, 'metrics_host = "127.0.0.1"\n[interruptions]\nprovider = "none"\n')
        assert main([*argv, "--state-dir", str(tmp_path / "s"), "--config", str(cfg)]) == 2
    assert "--metrics-port" in capsys.readouterr().err


def test_offered_cpu_and_memory_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--coordinator", "127.0.0.1:7070", "--state-dir", str(tmp_path), "--simulate", "H100-80GB:8"]
    assert main([*base, "--cpu", "192", "--memory", "2TiB", "--check-config"]) == 0
    out = capsys.readouterr().out
    assert '"cpu_milli": 192000' in out and '"memory_mib": 2097152' in out
    assert main([*base, "--memory", "lots", "--check-config"]) == 2
    assert "--memory" in capsys.readouterr().err
