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

from tests.support import new_bucket

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The S3-compatible server of the object-storage tests (fixture `s3_server`) is reached only as a
# user reaches S3: through the standard variables, which pyarrow reads. They are set here, before
# any fixture starts Ray, so Ray's workers and the CLI subprocesses inherit them; no real
# credentials or profile can leak into a test. Nothing listens on the port until a test needs it.
S3_PORT = free_port()
os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}", AWS_ACCESS_KEY_ID="testing",
                  AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_CONFIG_FILE",
              "AWS_SHARED_CREDENTIALS_FILE"):
    os.environ.pop(_name, None)


_RAY: dict = {}


@pytest.fixture(scope="session", autouse=True)
def ray_auth_token(tmp_path_factory) -> Path:
    """Ray's default, token authentication, stays on for every Ray the tests start. The session
    has its own token in a file named by RAY_AUTH_TOKEN_PATH (Ray's variable), so no test reads or
    writes the user's ~/.ray/auth_token, and every process started later (job drivers, CLI
    subprocesses, a driver's own local Ray) finds it. Only a test about auth being absent sets
    RAY_AUTH_MODE=disabled, in its own subprocess's environment."""
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    path = tmp_path_factory.mktemp("ray-auth") / "auth_token"
    path.write_text(generate_new_authentication_token())
    path.chmod(0o600)
    saved = {k: os.environ.pop(k, None) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    yield path
    for key, value in saved.items():
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value


def auth_header(token_file: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_file.read_text().strip()}"}


@pytest.fixture(scope="session")
def ray_local(ray_auth_token):
    """One real local Ray for the session, on 2 CPUs like the CI machine, with its dashboard
    (and so the job server) on a free loopback port. Job drivers inherit this environment, so
    `python` there must be this virtualenv's."""
    import ray
    import ray.data

    os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.pop("RAY_ADDRESS", None)
    # A temp dir of its own, naming this cluster as its current one: the job server points each
    # job's driver at the "current" cluster of its temp dir, and in the shared /tmp/ray that is
    # whichever cluster another `ray start` on this machine registered last.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths live under it
    ctx = ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(),
                   logging_level="ERROR", log_to_driver=False, _temp_dir=temp_dir)
    ray._private.utils.write_ray_address(ctx.address_info["gcs_address"], temp_dir)
    _RAY.update(dashboard_url=ctx.dashboard_url, session_dir=ctx.address_info["session_dir"])
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> str:
    """moto's standalone S3 server (a real HTTP server, its own process) on loopback, for the
    session; returns its endpoint URL (the one in AWS_ENDPOINT_URL)."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(S3_PORT)],
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/", timeout=5).read()
            break
        except OSError as err:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the S3 server did not start: {err}\n{log.read_text()[-2000:]}") from err
            time.sleep(0.3)
    yield endpoint
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A new, empty bucket: `s3://NAME`."""
    return new_bucket()


@pytest.fixture(scope="session")
def ray_head(ray_local, ray_auth_token) -> str:
    """The Ray Jobs API server (the dashboard) of the session's local Ray, on loopback: jobs
    submitted here run as they would on a cluster, in their own driver process with the
    project as working_dir. One cluster for the whole session rather than a second `ray start`
    beside it: half the daemons on a 2-core machine, and one thing fewer that can fail to start."""
    address = f"http://{_RAY['dashboard_url']}"
    deadline = time.monotonic() + 120
    while True:
        try:
            request = urllib.request.Request(f"{address}/api/version", headers=auth_header(ray_auth_token))
            urllib.request.urlopen(request, timeout=5).read()
            return address
        except OSError as err:
            if time.monotonic() > deadline:
                logs = Path(_RAY["session_dir"]) / "logs" / "dashboard.log"
                tail = "\n".join(logs.read_text(errors="replace").splitlines()[-25:]) if logs.is_file() else ""
                raise RuntimeError(f"the Ray job server at {address} did not answer: {err}\n{tail}") from err
            time.sleep(0.5)


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
