"""gpufleet generated protobuf code (v1 API)."""
