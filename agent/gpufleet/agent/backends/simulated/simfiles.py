"""How programs on a simulated GPU declare their GPU memory use and busy-ness.

A process writes ``$GPUFLEET_SIM_DIR/<pid>.json`` containing ``{"gpu": "<GPU uuid, MIG uuid or index>",
"mib": 2048, "busy": true}``. The simulated backend sums the files of live pids per GPU on every sample and
removes files whose process is gone. ``python -m gpufleet.agent.backends.simulated.use`` writes such a file.
Writes are atomic (temp file + rename) so the backend never reads half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

SIM_DIR_ENV = "GPUFLEET_SIM_DIR"


@dataclass(frozen=True, slots=True)
class SimUse:
    pid: int
    gpu: str  # GPU uuid, MIG uuid or index as text; "" = GPU 0
    mib: int
    busy: bool


def write_use(sim_dir: Path, pid: int, gpu: str, mib: int, busy: bool) -> Path:
    sim_dir.mkdir(parents=True, exist_ok=True)
    path = sim_dir / f"{pid}.json"
    tmp = sim_dir / f".{pid}.json.tmp"
    tmp.write_text(json.dumps({"gpu": gpu, "mib": mib, "busy": busy}))
    os.replace(tmp, path)
    return path


def parse_use(pid: int, text: str) -> SimUse | None:
    """One file's content, or None when it is not a valid declaration (ignored, like a bad driver answer)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    mib = data.get("mib", 0)
    gpu = data.get("gpu", "")
    if not isinstance(mib, int) or mib < 0 or not isinstance(gpu, str | int):
        return None
    return SimUse(pid=pid, gpu=str(gpu), mib=mib, busy=bool(data.get("busy", False)))


class UseReader:
    """Reads the sim dir, re-parsing only files whose mtime changed (cheap enough for every sample)."""

    def __init__(self, sim_dir: Path) -> None:
        self.sim_dir = sim_dir
        self._cache: dict[str, tuple[int, SimUse | None]] = {}

    def read(self) -> list[SimUse]:
        out: list[SimUse] = []
        seen: set[str] = set()
        try:
            entries = list(os.scandir(self.sim_dir))
        except FileNotFoundError:
            return []
        for entry in entries:
            name = entry.name
            if not name.endswith(".json") or not name[:-5].isdigit():
                continue
            try:
                mtime = entry.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            seen.add(name)
            cached = self._cache.get(name)
            if cached is None or cached[0] != mtime:
                try:
                    text = Path(entry.path).read_text()
                except FileNotFoundError:
                    continue
                cached = (mtime, parse_use(int(name[:-5]), text))
                self._cache[name] = cached
            if cached[1] is not None:
                out.append(cached[1])
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        return out

    def forget(self, pid: int) -> None:
        self._cache.pop(f"{pid}.json", None)
        try:
            (self.sim_dir / f"{pid}.json").unlink()
        except FileNotFoundError:
            pass


def read_uses(sim_dir: Path) -> list[SimUse]:
    return UseReader(sim_dir).read()
