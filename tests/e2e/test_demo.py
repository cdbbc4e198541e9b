"""`make demo` works: a local fleet (real coordinator and agent processes on loopback) places and runs every
example job, and `gpufleet dev --fleet` rejects a bad fleet file naming the field."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_places_and_runs_every_example() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gpufleet.common.demo", "--timeout", "90"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-2000:]
    assert "6 of 6 jobs succeeded." in out
    # the MIG slice, the fractional share and the 2-node gang were all placed
    assert ":3g.40gb]" in out and "@0.25]" in out
    all8 = r"\[0,1,2,3,4,5,6,7\]"
    assert re.search(rf"llm-pretrain-2node\s+RUNNING\s+aws-h100-\d{all8} aws-h100-\d{all8}", out), out[-3000:]
    assert "stopping the fleet" in out


def test_bad_fleet_file_exits_2_naming_the_field(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("nodes:\n  - name: a\n    gpus: H100-80GB\n    colour: red\n  - name: a\n    gpus: L4:1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gpufleet.common.cli", "dev", "--fleet", str(fleet), "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "nodes.0.gpus" in proc.stderr and "nodes.0.colour" in proc.stderr
