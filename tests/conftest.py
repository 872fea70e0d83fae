"""Shared fixtures: a real local Ray (as Ray's own tests do) and small real image datasets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.ray_cluster import START_TIMEOUT_S, RayCluster
from tests.support import free_port, new_bucket

VENV_BIN = Path(sys.executable).parent


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


# Ray's default, token authentication, stays on for every Ray the tests start. RAY_AUTH_MODE is
# set here, before any test module imports ray: Ray reads the mode when it loads, and a driver
# joining a cluster by its address (this process) does not turn token auth on by itself. The
# session's own token comes from the fixture below; a user's token never leaks in.
for _name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
    os.environ.pop(_name, None)
os.environ["RAY_AUTH_MODE"] = "token"

# Ray Train's controller polls its workers every 2 s by default, so each run a test starts with a
# TorchTrainer of its own waits up to 2 s per report and at its end; alexnet.train.fit polls every
# 0.25 s (CONTROLLER_POLL_S), and the tests' own trainers do the same. Ray Train passes the
# variable on to its controller and workers.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


@pytest.fixture(scope="session", autouse=True)
def ray_auth_token(tmp_path_factory) -> Path:
    """The session's token, in a file named by RAY_AUTH_TOKEN_PATH (Ray's variable), so no test
    reads or writes the user's ~/.ray/auth_token, and every process started later (job drivers,
    CLI subprocesses, a driver's own local Ray) finds it. Only a test about auth being absent sets
    RAY_AUTH_MODE=disabled, in its own subprocess's environment."""
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    path = tmp_path_factory.mktemp("ray-auth") / "auth_token"
    path.write_text(generate_new_authentication_token())
    path.chmod(0o600)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    return path


@pytest.fixture(scope="session")
def ray_local(ray_auth_token):
    """One real Ray for the session, on 2 CPUs like the CI machine: a head started with `ray start
    --head` (tests/support/ray_cluster.py), as users start one, with its dashboard (and so the job server)
    on a free loopback port, and this process connected to it as a driver. Every port of it is
    its own, the job agent's included: `ray.init()` would bind the agent to Ray's fixed 52365,
    which any other Ray on this machine (a demo, a CLI test's local Ray, a user's head) may hold,
    and an agent that cannot bind stays up without its HTTP server, so no job could be submitted
    for the whole session. Job drivers and workers inherit this environment (the cluster's
    processes copy it), so `python` there is this virtualenv's."""
    import ray
    import ray.data

    os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.pop("RAY_ADDRESS", None)
    cluster = RayCluster.start(head_cpus=2, object_store_bytes=None)
    try:
        ctx = ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        _RAY.update(dashboard=cluster.dashboard, session_dir=ctx.address_info["session_dir"])
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield ray
    finally:
        ray.shutdown()
        cluster.stop()


@pytest.fixture(scope="session")
def shapes_source(tmp_path_factory) -> Path:
    """A tiny image-folder tree of real JPEG/PNG files, 6 classes x 20 images."""
    from alexnet.demo import write_demo_images

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
def ray_head(ray_local) -> str:
    """The Ray Jobs API server (the dashboard) of the session's Ray, on loopback, once its head's
    job agent is ready, waited for as `alexnet submit` waits (jobs.cluster.wait_for_agent): jobs
    submitted here run as they would on a cluster, in their own driver process with the project
    as working_dir."""
    from jobs import cluster

    address = _RAY["dashboard"]
    cluster.wait_for_agent(cluster.connect(address), START_TIMEOUT_S)
    return address


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
