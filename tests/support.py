"""Small helpers several test modules share."""

from __future__ import annotations

import time
import uuid


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
    import pyarrow.fs

    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    fs, _ = pyarrow.fs.FileSystem.from_uri(f"s3://{name}?allow_bucket_creation=true")
    fs.create_dir(name)
    return f"s3://{name}"
