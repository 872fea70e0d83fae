"""`alexnet ui` serves the MLflow UI, and a headless Chromium sees the run's page in it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.support import free_port
from tests.support.mlflow_server import trained_sqlite, wait_http

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")
def test_ui_shows_the_run_page(ray_local, shapes_dataset, tmp_path_factory, tmp_path):
    from mlflow.tracking import MlflowClient

    trained = trained_sqlite(tmp_path_factory, shapes_dataset)
    run = MlflowClient(trained["uri"]).get_run(trained["run_id"])
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "ui", "--workdir", str(trained["workdir"]),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout.readline().startswith(f"MLflow UI: http://127.0.0.1:{port}")
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc)
        # The store is not on any command line (ps and /proc show those to every local user).
        server = psutil.Process(proc.pid).children(recursive=True)
        assert server and not any(trained["uri"] in " ".join(p.cmdline()) for p in server)
        url = f"http://127.0.0.1:{port}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        dom = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}",
             "--dump-dom", "--virtual-time-budget=20000", url],
            capture_output=True, text=True, timeout=180).stdout
        assert run.info.run_name in dom, dom[-2000:]
    finally:
        proc.send_signal(signal.SIGTERM)  # `alexnet ui` stops its server's whole process group
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            pytest.fail("alexnet ui did not stop on SIGTERM")
    assert proc.returncode in (130, -signal.SIGTERM)
    rest = proc.stdout.read()
    assert " INFO" not in rest and "Warning" not in rest, rest[-2000:]  # MLflow's and uvicorn's chatter: --verbose
