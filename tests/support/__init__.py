"""The helpers test modules share, in one place (no test module imports another).

Here: free ports, waiting, S3 buckets, crafted image bytes, the CLI run in this process. Beside it: ray_cluster (a real
multi-node Ray on this machine), mlflow_server (a real MLflow server and the CLI's training
run), netfault (a proxy that drops connections), fault_table (docs/FAULTS.md from the markers),
config_reference (docs/config.md from the code).
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
import zlib

import pyarrow.fs


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, every: float = 0.2):
    """Poll `predicate` until it returns something true (returned) or `timeout` s pass (AssertionError naming `what`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def new_bucket(prefix: str = "test") -> str:
    """A new, empty bucket on the S3 server AWS_ENDPOINT_URL names: `s3://NAME`."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    fs, _ = pyarrow.fs.FileSystem.from_uri(f"s3://{name}?allow_bucket_creation=true")
    fs.create_dir(name)
    return f"s3://{name}"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; a decompression bomb needs no more to be opened."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def cli_here(*args: str):
    """`alexnet ARGS` in this process -> (returncode, stdout, stderr), for commands that fail before
    Ray or MLflow start: a new interpreter importing the CLI would be ~4 s of each such test."""
    import contextlib
    import io
    import types

    from jobs.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as exit_:  # argparse's own errors
            rc = exit_.code
    return types.SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())
