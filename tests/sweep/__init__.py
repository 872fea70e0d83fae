"""Sweeps: search spaces, Ray Tune trials as training runs, their MLflow runs and resume."""
