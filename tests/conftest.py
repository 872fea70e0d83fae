"""Shared fixtures: a real local Ray (as Ray's own tests do) and small real image datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test cluster on loopback only


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the session, on 2 CPUs like the CI machine."""
    import ray
    import ray.data

    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="ERROR",
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shapes_source(tmp_path_factory) -> Path:
    """A tiny image-folder tree of real JPEG/PNG files, 6 classes x 20 images."""
    from pipelines.synthetic import write_demo_images

    return write_demo_images(tmp_path_factory.mktemp("shapes") / "src", per_class=20, size=72, seed=1)


@pytest.fixture(scope="session")
def shapes_dataset(ray_local, shapes_source, tmp_path_factory) -> Path:
    """The tiny source ingested into a Parquet dataset (val 25%)."""
    from pipelines.ingest import IngestOptions, ingest

    dest = tmp_path_factory.mktemp("datasets") / "shapes"
    ingest(shapes_source, dest, IngestOptions(resize=72, val_fraction=0.25))
    return dest
