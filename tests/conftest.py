"""Shared fixtures: a real local Ray (as Ray's own tests do) and small real image datasets."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test cluster on loopback only

VENV_BIN = Path(sys.executable).parent


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_head():
    """A real Ray head with the job server on loopback. Stopped by ending our own `ray start
    --block` and then only the processes whose command line names our temp dir (never `ray stop`,
    which would stop every Ray on the machine)."""
    import psutil

    temp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths have a length limit
    dash = free_port()
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", "--include-dashboard=true",
           f"--temp-dir={temp}", "--disable-usage-stats", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
           f"--metrics-export-port={free_port()}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start did not bring up a job server at {address}")
            time.sleep(0.5)
    yield address
    ours = [p for p in psutil.process_iter(["cmdline"]) if temp in " ".join(p.info["cmdline"] or [])]
    for p in ours:
        p.terminate()
    _, alive = psutil.wait_procs(ours, timeout=10)
    for p in alive:
        p.kill()
    proc.wait(10)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def png_source(tmp_path_factory) -> Path:
    """Real PNG files, 2 classes x 6 images, ROOT/<class>/<image>."""
    from PIL import Image

    root = tmp_path_factory.mktemp("pngs") / "src"
    for c, color in enumerate(((220, 30, 30), (30, 30, 220))):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(6):
            img = Image.new("RGB", (80, 80), color)
            img.putpixel((i, i), (i * 40, 255 - i * 40, 0))  # distinct bytes per image
            img.save(root / f"class{c}" / f"{i}.png")
    return root
