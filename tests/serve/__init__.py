"""Serving: model files, prediction and evaluation."""
