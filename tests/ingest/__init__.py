"""Ingest: an image source -> a Parquet dataset."""
