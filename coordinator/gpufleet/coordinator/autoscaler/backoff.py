"""Per-offer backoff: an offer (provider, region, type, market) that failed for capacity, quota or a node that
never booted is skipped for a while, doubling on each further failure, so the planner moves on to the
next-cheapest option and no loop spins on one that keeps failing."""

from __future__ import annotations

from dataclasses import dataclass

from gpufleet.coordinator.autoscaler.planner import OfferKey


@dataclass(slots=True)
class _Entry:
    failures: int
    until_ms: int
    reason: str


class OfferBackoff:
    def __init__(self, initial_s: float = 30.0, max_s: float = 900.0) -> None:
        self.initial_ms = int(initial_s * 1000)
        self.max_ms = int(max_s * 1000)
        self._entries: dict[OfferKey, _Entry] = {}

    def failed(self, key: OfferKey, now_ms: int, reason: str) -> int:
        """Record a failure; returns the backoff in ms now in force for ``key``."""
        e = self._entries.get(key)
        failures = (e.failures if e else 0) + 1
        delay: int = min(self.max_ms, self.initial_ms << (failures - 1))
        self._entries[key] = _Entry(failures, now_ms + delay, reason)
        return delay

    def succeeded(self, key: OfferKey) -> None:
        self._entries.pop(key, None)

    def active(self, now_ms: int) -> list[OfferKey]:
        return [k for k, e in self._entries.items() if e.until_ms > now_ms]

    def reason(self, key: OfferKey) -> str:
        e = self._entries.get(key)
        return e.reason if e else ""
