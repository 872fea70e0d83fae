"""Where a run's code came from: the git commit, the same answer locally and in a Ray job.

A submitted job's working_dir is uploaded without `.git`, so `alexnet submit` passes the commit it
read on the submitter's machine in `ALEXNET_GIT_COMMIT`; inside the job that value wins.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

COMMIT_ENV = "ALEXNET_GIT_COMMIT"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def git_commit(root: Path = PROJECT_ROOT) -> str | None:
    """`$ALEXNET_GIT_COMMIT` when set (a submitted job), else the commit of the checkout at `root`
    (`<sha>-dirty` when tracked files differ from it), else None (no git, not a checkout)."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
