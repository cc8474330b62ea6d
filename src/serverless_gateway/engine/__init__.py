"""The execution engine: dispatch QUEUED jobs to Ray, sync statuses, collect logs and results."""
