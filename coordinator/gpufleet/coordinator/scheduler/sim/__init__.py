"""``gpufleet sim``: replay a job trace through the real scheduler in-process with a simulated clock."""
