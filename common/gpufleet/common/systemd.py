"""systemd integration for the daemons (``Type=notify`` units): readiness, stopping and watchdog pings."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def sd_notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``, ``WATCHDOG=1``) to systemd; a no-op (False) outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(message.encode())
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", address, e)
        return False
    return True


def watchdog_interval_s() -> float:
    """Half the watchdog period systemd asked for (``WATCHDOG_USEC``), or 0 when there is no watchdog."""
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    return usec / 2_000_000
