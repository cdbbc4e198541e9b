"""Fixtures of the contract suites: a real etcd per module (``etcd_server``) or per test (``fresh_etcd_server``)."""

from tests.helpers.etcd_server import etcd_server, fresh_etcd_server

__all__ = ["etcd_server", "fresh_etcd_server"]
