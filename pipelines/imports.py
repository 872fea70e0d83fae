"""Imports that cancelling a Ray task cannot cut in half.

Ray cancels a running task (Ray Data does when a `limit` or `take_batch` has its rows, when a
sibling task fails, when a consumer stops early) by raising KeyboardInterrupt in the worker's
main thread. One that lands inside a first import of torch (seconds on a small machine) leaves torch
half-initialised in that process, and Ray reuses the worker: every later task there fails with
"partially initialized module 'torch' has no attribute ...". So the heavy modules a
Ray Data task imports on first use are imported whole, with the interrupt held until the import
has finished and raised then.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from types import ModuleType


def import_whole(name: str) -> ModuleType:
    """`importlib.import_module(name)`, with SIGINT (Ray's cancel: `_thread.interrupt_main`, since
    Ray's workers block the OS signal) handed to the process's handler once the import is done."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    if threading.current_thread() is not threading.main_thread():
        return importlib.import_module(name)  # signals only ever interrupt the main thread
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        return importlib.import_module(name)
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and callable(previous):
            previous(signal.SIGINT, None)  # now, in this frame (Python's default raises KeyboardInterrupt)
