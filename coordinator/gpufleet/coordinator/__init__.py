"""The gpufleet coordinator: replicated control plane."""
