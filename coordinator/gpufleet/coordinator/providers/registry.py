"""Provider registry: provider kind -> factory, and the set of live providers the autoscaler uses.

Factories are named by module path and imported on use, so a coordinator that never configures Azure never
imports the Azure SDK. Every created provider is wrapped in ``metered(retrying(...))`` (providers/decorators.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from gpufleet.common.errors import InvalidInputError, Problem
from gpufleet.coordinator.providers.base import CloudProvider
from gpufleet.coordinator.providers.decorators import metered, retrying

#: kind -> "module:function"; the function takes the provider's settings mapping and returns a CloudProvider
FACTORIES: dict[str, str] = {
    "aws": "gpufleet.coordinator.providers.aws:create",
    "gcp": "gpufleet.coordinator.providers.gcp:create",
    "azure": "gpufleet.coordinator.providers.azure:create",
    "fake": "gpufleet.coordinator.providers.fake:create",
    "static": "gpufleet.coordinator.providers.static:create",
}


def create_provider(kind: str, settings: Mapping[str, Any] | None = None, *, decorate: bool = True) -> CloudProvider:
    entry = FACTORIES.get(kind)
    if entry is None:
        raise InvalidInputError(Problem("provider", f"unknown provider {kind!r}; known: {', '.join(FACTORIES)}"))
    module_name, func = entry.split(":")
    factory = getattr(importlib.import_module(module_name), func)
    provider: CloudProvider = factory(dict(settings or {}))
    return metered(retrying(provider)) if decorate else provider


class ProviderRegistry:
    """The live providers, by name (usually the kind; several accounts of one kind may use distinct names)."""

    def __init__(self, providers: Iterable[CloudProvider] = ()) -> None:
        self._providers: dict[str, CloudProvider] = {}
        for p in providers:
            self.register(p)

    def register(self, provider: CloudProvider) -> None:
        self._providers[provider.name] = provider

    def get(self, name: str) -> CloudProvider:
        try:
            return self._providers[name]
        except KeyError:
            raise InvalidInputError(
                Problem(
                    "provider",
                    f"no provider named {name!r} is configured; configured: {', '.join(self._providers) or 'none'}",
                )
            ) from None

    def names(self) -> list[str]:
        return list(self._providers)

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    async def close(self) -> None:
        for p in self._providers.values():
            await p.close()
