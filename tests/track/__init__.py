"""Tracking and registry: MLflow runs, the champion rule, publishing through outages."""
