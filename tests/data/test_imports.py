"""import_whole: a cancel (SIGINT) that arrives during an import waits for the import to finish."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from pipelines.imports import import_whole

# The module interrupts its own import the way Ray's cancel does (`_thread.interrupt_main`, not an
# OS signal, which another thread of this process could take), then finishes if it is allowed to.
SELF_INTERRUPTING = """
import _thread, signal
_thread.interrupt_main(signal.SIGINT)
total = sum(range(100_000))  # plenty of bytecode boundaries for a pending signal
done = True
"""


@pytest.mark.fault("SIGINT in the middle of a module's import", inputs=1,
                   outcome="the handler runs once, after the import, with the module whole; a second import "
                           "returns it")
def test_an_interrupt_during_the_import_reaches_the_handler_after_it(tmp_path, monkeypatch):
    (tmp_path / "interrupted_mod.py").write_text(SELF_INTERRUPTING)
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []  # per call of the process's handler: was the module whole by then?

    def handler(signum, frame):
        seen.append(getattr(sys.modules.get("interrupted_mod"), "done", False))
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)  # whatever an earlier test (Ray Train) left there
    try:
        with pytest.raises(KeyboardInterrupt):
            import_whole("interrupted_mod")
        assert seen == [True]  # delivered once, after the import, to the handler it interrupted
        assert signal.getsignal(signal.SIGINT) is handler
        assert import_whole("interrupted_mod") is sys.modules["interrupted_mod"]
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.modules.pop("interrupted_mod", None)


# Waits inside its import until the test lets it go, so the cancel lands mid-import.
HELD_OPEN = """
import os, pathlib, time
here = pathlib.Path(__file__).parent
(here / "started").write_text("")
while not (here / "release").exists():
    time.sleep(0.02)
(here / "done").write_text(str(os.getpid()))
"""


@pytest.mark.fault("a Ray task cancelled inside an import", inputs=1,
                   outcome="the task ends cancelled, and only after the import ran to its end")
def test_a_ray_task_cancelled_mid_import_leaves_the_module_whole(ray_local, tmp_path):
    """What CI hit: Ray Data cancelled a task inside its first `import torch`, and the next task
    on that reused worker found torch half-initialised."""
    def _import_then_wait(folder: str, name: str) -> None:  # local: pickled by value for the worker
        import sys
        import time

        from pipelines.imports import import_whole

        sys.path.insert(0, folder)
        import_whole(name)
        time.sleep(60)  # only a cancel ends this task

    name = f"held_open_{time.time_ns()}"  # workers outlive the test: a fresh module name each run
    (tmp_path / f"{name}.py").write_text(HELD_OPEN)
    ref = ray_local.remote(_import_then_wait).remote(str(tmp_path), name)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, "the task never started its import"
        time.sleep(0.05)
    ray_local.cancel(ref)
    time.sleep(2)  # the interrupt reaches the worker well within this while the import still waits
    (tmp_path / "release").write_text("")
    with pytest.raises(ray_local.exceptions.TaskCancelledError):
        ray_local.get(ref, timeout=60)
    assert (tmp_path / "done").exists(), "the cancel cut the import in half"
