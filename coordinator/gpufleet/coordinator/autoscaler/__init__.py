"""The autoscaler: node pools, a cost-aware scale-up planner on top of the real scheduler, an instance state
machine with a reconciler, scale-down, spot interruption handling and cloud-init bootstrap.
See docs/architecture/autoscaler.md."""
