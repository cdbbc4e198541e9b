"""The gpufleet agent: runs on every GPU host."""
