"""GPU backends: NVML on real hosts, simulated everywhere else. See base.py for the contract."""
