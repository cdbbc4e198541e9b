"""AWS EC2 provider package. See providers/base.py; only client.py imports boto3."""

from __future__ import annotations

from typing import Any

from gpufleet.common.errors import InvalidInputError, Problem
from gpufleet.coordinator.providers.aws.client import AwsClientSettings
from gpufleet.coordinator.providers.aws.provider import AwsProvider, AwsRegionSettings

__all__ = ["AwsClientSettings", "AwsProvider", "AwsRegionSettings", "create"]


def create(settings: dict[str, Any]) -> AwsProvider:
    """Registry factory. Settings: ``regions: {name: {image_id, subnet_ids, security_group_ids, ...}}`` and
    optional ``endpoint_url`` and credentials (else boto3's default chain)."""
    regions_raw = settings.get("regions")
    if not isinstance(regions_raw, dict) or not regions_raw:
        raise InvalidInputError(Problem("providers.aws.regions", "a mapping of region -> {image_id: ami-...}"))
    regions = {}
    for name, r in regions_raw.items():
        if "image_id" not in r:
            raise InvalidInputError(Problem(f"providers.aws.regions.{name}.image_id", "required (an AMI id)"))
        regions[name] = AwsRegionSettings(
            image_id=r["image_id"],
            subnet_ids=dict(r.get("subnet_ids", {})),
            security_group_ids=tuple(r.get("security_group_ids", ())),
            iam_instance_profile=r.get("iam_instance_profile", ""),
            key_name=r.get("key_name", ""),
        )
    client = AwsClientSettings(
        endpoint_url=settings.get("endpoint_url"),
        access_key_id=settings.get("access_key_id"),
        secret_access_key=settings.get("secret_access_key"),
        profile=settings.get("profile"),
    )
    return AwsProvider(regions, client)
