"""Enforcement of GPU sharing: memory limits (MPS + NVML watchdog), time-slicing, MIG."""
