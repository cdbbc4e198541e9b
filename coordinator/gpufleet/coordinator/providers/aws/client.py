"""The only module that imports boto3/botocore (lazily, inside functions). See providers/base.py.

``endpoint_url`` points the client at moto in tests; credentials may be given explicitly (tests use dummy
ones) or left to boto3's usual chain in production.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AwsClientSettings:
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    profile: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0


def aws_client(
    service: str,
    region: str,
    settings: AwsClientSettings,
    *,
    endpoint_url: str | None = None,
    max_attempts: int = 1,
) -> Any:
    """A boto3 client for ``service`` ("ec2", "pricing"); ``endpoint_url`` overrides ``settings.endpoint_url``.

    ``max_attempts`` is 1 for calls our own retry decorator wraps (providers/decorators.py); a batch job such as
    a price refresh may let botocore ride out throttling instead."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        profile_name=settings.profile,
    )
    config = Config(
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
    )
    return session.client(
        service, region_name=region, endpoint_url=endpoint_url or settings.endpoint_url, config=config
    )


def ec2_client(region: str, settings: AwsClientSettings) -> Any:
    return aws_client("ec2", region, settings)


def vendor_errors() -> tuple[type[BaseException], ...]:
    """The SDK's exception bases, for errors.py to catch without importing botocore itself."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)
