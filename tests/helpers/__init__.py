"""Test helpers shared across the suite: real servers started on loopback (etcd, coordinators, agents)."""
