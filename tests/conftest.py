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


def _start_ray_head(temp: str) -> tuple[subprocess.Popen, str]:
    """`ray start --head --block` on fresh loopback ports; returns (process, job-server address), or
    raises with the tail of Ray's own output so a failure on a CI machine can be diagnosed."""
    dash = free_port()
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", "--include-dashboard=true",
           f"--temp-dir={temp}", "--disable-usage-stats", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
           f"--metrics-export-port={free_port()}"]
    log = Path(temp) / "ray-start.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 150  # a loaded 2-core CI machine can take well over a minute
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2).read()
            return proc, address
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    _stop_ours(temp, proc)
    tails = [f"--- {f}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-25:])
             for f in [log, *Path(temp).glob("session_*/logs/dashboard.log")] if f.is_file()]
    raise RuntimeError(f"ray start did not bring up a job server at {address} "
                       f"(exit {proc.poll()})\n" + "\n".join(tails))


def _stop_ours(temp: str, proc: subprocess.Popen) -> None:
    """End our `ray start` and only the processes whose command line names our temp dir (never
    `ray stop`, which would stop every Ray on the machine)."""
    import psutil

    ours = [p for p in psutil.process_iter(["cmdline"]) if temp in " ".join(p.info["cmdline"] or [])]
    for p in ours:
        p.terminate()
    _, alive = psutil.wait_procs(ours, timeout=10)
    for p in alive:
        p.kill()
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


@pytest.fixture(scope="session")
def ray_head():
    """A real Ray head with the job server on loopback. One retry on fresh ports: the ports are
    picked free but released before Ray binds them, so another process can take one in between."""
    temp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths have a length limit
    try:
        proc, address = _start_ray_head(temp)
    except RuntimeError as first:
        print(f"ray_head: first start failed, retrying on new ports:\n{first}", file=sys.stderr)
        proc, address = _start_ray_head(temp)
    yield address
    _stop_ours(temp, proc)
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
