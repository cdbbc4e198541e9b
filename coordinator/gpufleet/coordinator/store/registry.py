"""``open_store``: turn a ``--store`` URL into a ``ClusterStore``.

Valid forms:

* ``embedded`` (the default): ``EmbeddedStore`` in ``<state_dir>/store.db``; one coordinator process only.
* ``embedded:///abs/path/store.db``: ``EmbeddedStore`` in that file.
* ``etcd://h1:2379,h2:2379,h3:2379``: ``EtcdStore`` on those endpoints (port defaults to 2379), for HA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gpufleet.common.errors import InvalidInputError, Problem

from .base import ClusterStore

VALID_FORMS = "'embedded', 'embedded:///path/to/store.db' or 'etcd://host1:2379,host2:2379,host3:2379'"
DEFAULT_ETCD_PORT = 2379


@dataclass(frozen=True, slots=True)
class StoreUrl:
    kind: Literal["embedded", "etcd"]
    path: Path | None = None  # embedded: the file (None: state_dir/store.db)
    endpoints: tuple[str, ...] = ()  # etcd: "host:port" each


def _bad(url: str, why: str) -> InvalidInputError:
    return InvalidInputError(Problem("--store", f"{url!r} is not a store URL ({why}); use {VALID_FORMS}"))


def parse_store_url(url: str) -> StoreUrl:
    """Parse a ``--store`` value; raises InvalidInputError naming ``--store`` and the valid forms."""
    text = url.strip()
    if text in ("embedded", "embedded:", "embedded://"):
        return StoreUrl("embedded")
    if text.startswith("embedded://"):
        rest = text[len("embedded://") :]
        if not rest.startswith("/") or rest == "/":
            raise _bad(url, "the embedded store path must be absolute, as in embedded:///var/lib/gpufleet/store.db")
        return StoreUrl("embedded", path=Path(rest))
    if text.startswith("etcd://"):
        body = text[len("etcd://") :].rstrip("/")
        if not body:
            raise _bad(url, "no etcd endpoint given")
        return StoreUrl("etcd", endpoints=tuple(_endpoint(url, part) for part in body.split(",")))
    raise _bad(url, "unknown scheme")


def _endpoint(url: str, part: str) -> str:
    part = part.strip()
    if not part or "/" in part or "@" in part:
        raise _bad(url, f"bad etcd endpoint {part!r}")
    if part.startswith("["):  # [ipv6]:port
        host, sep, port_text = part[1:].partition("]")
        port_text = port_text.removeprefix(":") if sep else ""
        host_out = f"[{host}]"
    else:
        host, _, port_text = part.partition(":")
        host_out = host
    if not host:
        raise _bad(url, f"etcd endpoint {part!r} has no host")
    if not port_text:
        return f"{host_out}:{DEFAULT_ETCD_PORT}"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(url, f"etcd endpoint {part!r} has a bad port")
    return f"{host_out}:{int(port_text)}"


def open_store(url: str, state_dir: Path) -> ClusterStore:
    """Open the store ``url`` names (see module docstring). Nothing is contacted until the first call."""
    parsed = parse_store_url(url)
    if parsed.kind == "embedded":
        from .embedded import EmbeddedStore

        return EmbeddedStore(parsed.path or Path(state_dir) / "store.db")
    from .etcd import EtcdStore

    store: ClusterStore = EtcdStore(list(parsed.endpoints))
    return store
