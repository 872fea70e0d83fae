"""What a command prints: the project's own lines on the terminal; Ray's and MLflow's logs in files.

By default:
- Ray's workers and actors (Ray Train's controller and workers, Ray Data's coordinators) keep
  their output in the Ray session's logs folder, where Ray writes it (`log_to_driver=False`). A
  training run's own lines (epochs, progress, notes, recovered failures) reach the terminal
  through `alexnet.train.progress`.
- In this process, the log records of Ray, MLflow and every other library, Python's warnings and
  what Ray's C++ core writes to stderr go to `SESSION/logs/alexnet-driver-PID.log` in that folder
  (Ray Data also keeps writing its own, `SESSION/logs/ray-data/`).
- Ray Data's progress (ingest, predict, evaluate) stays on the terminal: one bar per execution
  on a terminal, else one line every 30 s (RayDataLines).
With `--verbose`, all of it reaches the terminal as Ray and MLflow print it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from pipelines.redaction import redact

_verbose = False
# Ray Data's progress when stdout is not a terminal: the log records of this logger, every
# RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL seconds (Ray Data's variable, read when its first
# execution starts; set to the training run's interval, alexnet.train.progress.PLAIN_EVERY_S).
RAY_DATA_PROGRESS_LOGGER = "ray.data._internal.progress.logging_progress"
RAY_DATA_INTERVAL_VAR = "RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL"


def set_verbose(on: bool) -> None:
    global _verbose
    _verbose = bool(on)


def verbose() -> bool:
    return _verbose


class LogFile(logging.Handler):
    """The library log records of this process: held until the Ray session's logs folder is
    known (Ray logs while it starts), then written there."""

    def __init__(self):
        super().__init__()
        self.path: Path | None = None
        self._held: collections.deque = collections.deque(maxlen=10_000)
        self._file: logging.Handler | None = None

    def open(self, path: Path) -> None:
        self.path = path
        self._file = logging.FileHandler(path, encoding="utf-8")
        self._file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        while self._held:
            self._file.handle(self._held.popleft())

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is None:
            self._held.append(record)
        else:
            self._file.handle(record)

    def show_held(self) -> None:
        """No logs folder after all (Ray did not start): the held warnings and errors go to stderr."""
        while self._held:
            record = self._held.popleft()
            if record.levelno >= logging.WARNING:
                print(f"{record.levelname} {record.name}: {record.getMessage()}", file=sys.stderr)


class RayDataLines(logging.Handler):
    """Ray Data's progress when stdout is not a terminal, as one plain line per report: of the
    block it logs each time ('======= Running Dataset: ID =======', 'Total Progress: 38/40',
    resources), the total only, with rate and ETA, to stderr."""

    def __init__(self):
        super().__init__()
        self._started: dict[str, float] = {}
        self._dataset = ""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        from alexnet.train.progress import PLAIN_FORMAT

        message = record.getMessage()
        header = re.fullmatch(r"=+ Running Dataset: (\S+) =+", message)
        if header:
            self._dataset = header.group(1)
            self._started.setdefault(self._dataset, record.created)
            return
        total = re.fullmatch(r"Total Progress: (\d+)/(\d+|\?)", message)
        if total and int(total.group(1)) > 0:  # the report at the start says nothing yet
            done, of = int(total.group(1)), None if total.group(2) == "?" else int(total.group(2))
            elapsed = record.created - self._started.get(self._dataset, record.created)
            print(tqdm.format_meter(done, of, elapsed, prefix="Ray Data", unit="row", bar_format=PLAIN_FORMAT
                                    if of else "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}]"),
                  file=sys.stderr, flush=True)


def _is_console(handler: logging.Handler) -> bool:
    return (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler))


def route_library_logs(target: logging.Handler) -> None:
    """Every console handler that a library (Ray, Ray Data, MLflow, ...) configured gives way to
    `target`, and records that would reach Python's last-resort printer go there too. Idempotent;
    records of loggers configured after this call keep their handlers."""
    root = logging.getLogger()
    loggers = [root, *(lg for lg in list(root.manager.loggerDict.values()) if isinstance(lg, logging.Logger))]
    for logger in loggers:
        consoles = [h for h in logger.handlers if _is_console(h)]
        for handler in consoles:
            logger.removeHandler(handler)
        if (consoles and not logger.handlers) or logger is root:
            if target not in logger.handlers:
                logger.addHandler(target)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> root -> target
    progress = logging.getLogger(RAY_DATA_PROGRESS_LOGGER)
    if not any(isinstance(h, RayDataLines) for h in progress.handlers):
        progress.addHandler(RayDataLines())


def native_stderr_to(path: Path):
    """Point file descriptor 2 (where Ray's C++ core writes its errors) at `path`, and Python's
    sys.stderr at a copy of the terminal, so the project's own lines and tracebacks still show.
    Returns the function that undoes it, or None when sys.stderr is not descriptor 2 (a test's
    capture): then nothing changes."""
    try:
        if sys.stderr.fileno() != 2:
            return None
    except (AttributeError, OSError, ValueError):
        return None
    previous = sys.stderr
    previous.flush()
    terminal = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.close(log)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=previous.encoding, errors=previous.errors)

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        sys.stderr.close()
        sys.stderr = previous

    return restore


def alexnet_command() -> str:
    """How the user runs this installation's `alexnet`: the bare name when it is on PATH, else
    the script's path (`.venv/bin/alexnet` from the project folder), so a printed command works
    when pasted outside an activated virtualenv."""
    script = Path(sys.executable).with_name("alexnet")
    found = shutil.which("alexnet")
    if not script.exists() or (found and Path(found).resolve() == script.resolve()):
        return "alexnet"
    try:
        return shlex.quote(str(script.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(script))


def ui_hint(*, workdir: Path | None = None, tracking_uri: str | None = None) -> str:
    """The command that opens the MLflow UI on a store: `alexnet ui --workdir W` or `--tracking-uri URI`."""
    if tracking_uri:
        from pipelines.redaction import redact

        return f"{alexnet_command()} ui --tracking-uri {shlex.quote(redact(tracking_uri))}"
    return f"{alexnet_command()} ui --workdir {shlex.quote(str(workdir))}"


class Redacting:
    """A text stream that masks credentials (pipelines.redaction) in whatever is written through
    it: the CLI's one output boundary, so no command's print, error line or echoed option can
    show a password, whichever code path wrote it."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name):  # flush, isatty, fileno, encoding...: the stream's own
        return getattr(self._stream, name)


@contextlib.contextmanager
def redacted_output():
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Redacting(sys.stdout), Redacting(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
