"""Everything that speaks to MLflow: the run (tracking: open, log, end; errors and retries),
the registry's champion rule (registry), putting a trained model into it without losing it to an
outage (publish), and where a run's code came from (provenance)."""
