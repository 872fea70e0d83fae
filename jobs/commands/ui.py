"""`alexnet ui`: the MLflow UI on 127.0.0.1 for a work directory's store (or any tracking URI).

Starts `mlflow ui` against the store and prints its address; Ctrl-C stops it. With an
http(s) tracking URI the server already is the UI: its address is printed and nothing starts.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from jobs.runtime import add_store_options

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for the tracking store",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_store_options(p)
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    p.set_defaults(func=run)


def ui_command(port: int, *, verbose: bool = False) -> list[str]:
    """`mlflow ui` on loopback, one worker (one person's browser). Its store travels in
    MLFLOW_BACKEND_STORE_URI (MLflow's own variable), not on the command line, which any local
    user reads in /proc or `ps`. Unless --verbose, uvicorn's request and start-up INFO lines stay
    out of the terminal (ui_env quiets MLflow's own)."""
    import sys
    from pathlib import Path

    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow) if mlflow.exists() else "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    return command if verbose else [*command, "--uvicorn-opts", "--log-level warning"]


def ui_env(tracking_uri: str, *, verbose: bool = False) -> dict[str, str]:
    """The UI server's environment. MLflow's job runner stays off: this project submits no MLflow
    server jobs, and the runner starts five more Python processes that import MLflow, which
    delay the UI's start by seconds on a small machine."""
    import os

    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": tracking_uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if not verbose:  # MLflow's INFO lines (tables created, job executors) and its libraries' warnings
        env.update(MLFLOW_LOGGING_LEVEL="WARNING", PYTHONWARNINGS="ignore")
    return env


def run(args) -> int:
    import os
    import signal
    import subprocess

    from pipelines.redaction import redact
    from jobs.runtime import existing_store, sigterm_as_interrupt
    from pipelines.errors import UserError

    tracking_uri = existing_store(args)
    if tracking_uri.startswith(("http://", "https://")):
        print(f"MLflow UI: {redact(tracking_uri)} (the tracking server serves it)")
        return 0
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: expected 1-65535")
    print(f"MLflow UI: http://127.0.0.1:{args.port}  (store {redact(tracking_uri)}; Ctrl-C stops it)", flush=True)
    # Its own process group: the server's workers are stopped with it, Ctrl-C or SIGTERM alike.
    with sigterm_as_interrupt():
        proc = subprocess.Popen(ui_command(args.port, verbose=args.verbose), start_new_session=True,
                                env=ui_env(tracking_uri, verbose=args.verbose))
        try:
            return proc.wait()
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            raise
