"""Running jobs on the host: the per-job sh supervisor, the runner that starts/stops/re-adopts it, the job
environment, log reading, and the manager that reconciles the coordinator's desired state."""
