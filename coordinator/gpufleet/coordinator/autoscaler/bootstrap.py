"""Render the cloud-init user-data that turns a fresh cloud machine into a gpufleet node.

One template (``packaging/cloud-init/gpufleet-agent.yaml.tmpl``) serves all three clouds: it installs the agent
package, writes ``/etc/gpufleet/agent.toml`` (node name = the instance record id, coordinators, join token,
provider/region/zone/type/spot facts, pool label) and the systemd unit (``systemd/gpufleet-agent.service``), and
starts the agent, which registers with the coordinator. The template and unit come from the installed wheel's
``data/`` folder (pyproject force-include) or, in a checkout, from the source tree; both paths are configurable.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

from gpufleet.common import node_labels
from gpufleet.common.errors import InvalidInputError, Problem

_DATA = Path(__file__).resolve().parent / "data"  # in an installed wheel (pyproject force-include)
_ROOT = Path(__file__).resolve().parents[4]  # in a source checkout / editable install


def _packaged_or_tree(name: str, tree_path: Path) -> Path:
    packaged = _DATA / name
    return packaged if packaged.is_file() else tree_path


DEFAULT_TEMPLATE = _packaged_or_tree(
    "gpufleet-agent.yaml.tmpl", _ROOT / "packaging" / "cloud-init" / "gpufleet-agent.yaml.tmpl"
)
DEFAULT_UNIT = _packaged_or_tree("gpufleet-agent.service", _ROOT / "systemd" / "gpufleet-agent.service")


@dataclass(frozen=True, slots=True)
class BootstrapConfig:
    coordinators: tuple[str, ...]  # host:port addresses the agent can reach (any replica)
    join_token: str = ""
    package: str = "gpufleet[nvml]"  # pip requirement (a version pin or a wheel URL in production)
    template_path: Path = DEFAULT_TEMPLATE
    unit_path: Path = DEFAULT_UNIT
    extra_labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeFacts:
    node_name: str
    pool: str
    provider: str
    region: str
    instance_type: str
    spot: bool
    zone: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # the pool's node labels


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def agent_toml(cfg: BootstrapConfig, facts: NodeFacts) -> str:
    labels = {**cfg.extra_labels, **facts.labels, node_labels.POOL: facts.pool}
    lines = [
        f"name = {_toml_str(facts.node_name)}",
        f"coordinators = [{', '.join(_toml_str(c) for c in cfg.coordinators)}]",
        f"provider = {_toml_str(facts.provider)}",
        f"region = {_toml_str(facts.region)}",
        f"zone = {_toml_str(facts.zone)}",
        f"instance_type = {_toml_str(facts.instance_type)}",
        f"spot = {'true' if facts.spot else 'false'}",
        "",
        "[labels]",
        *(f"{_toml_str(k)} = {_toml_str(v)}" for k, v in sorted(labels.items())),
        "",
        "[connection]",
        f"join_token = {_toml_str(cfg.join_token)}",
    ]
    return "\n".join(lines) + "\n"


def _indent(text: str, spaces: int = 6) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else "" for line in text.rstrip("\n").splitlines())


def render_user_data(cfg: BootstrapConfig, facts: NodeFacts) -> str:
    """The cloud-init document for one node. Raises InvalidInputError naming what is missing."""
    if not cfg.coordinators:
        raise InvalidInputError(Problem("autoscaler.bootstrap.coordinators", "list at least one host:port"))
    for path, name in ((cfg.template_path, "template_path"), (cfg.unit_path, "unit_path")):
        if not path.is_file():
            raise InvalidInputError(Problem(f"autoscaler.bootstrap.{name}", f"{path} does not exist"))
    if any(c in cfg.package for c in "'\"`$;&|\n"):
        raise InvalidInputError(Problem("autoscaler.bootstrap.package", "a pip requirement without shell characters"))
    template = string.Template(cfg.template_path.read_text())
    return template.substitute(
        agent_toml=_indent(agent_toml(cfg, facts)),
        systemd_unit=_indent(cfg.unit_path.read_text()),
        package=cfg.package,
    )
