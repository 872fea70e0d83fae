"""Command line, job entrypoints, submission and scheduling: the wiring around a run."""
