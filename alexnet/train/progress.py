"""What a training run shows on the driver's terminal: one line per epoch, a live bar within it,
the loop's own notes, and one line per recovered worker failure.

Three processes speak and one prints. Rank 0's loop posts its step count (`Channel.steps`, the
engine's `before_step` hook) and its notes (`Channel.say`); Ray Train's controller posts each
finished epoch's report and each worker failure (`EpochReporter`, a `ray.train.UserCallback`);
all go to a small actor (`Board`) that the driver takes from between its waits (`RunView.poll`).
The driver draws with tqdm: a live bar when stdout is a terminal, a plain line every 30 s when it
is not (CI, `ray job logs`, a file). Ray's own output stays in Ray's log files (jobs/output.py).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import ray
from ray.train import UserCallback
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from pipelines.redaction import redact

TICK_S = 0.5  # rank 0 posts its step count at most this often
PLAIN_EVERY_S = 30.0  # off a terminal: seconds between in-epoch progress lines
PLAIN_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}]"


def epoch_line(report: dict, epochs: int) -> str:
    """One finished epoch, from the metrics the loop reports (alexnet.train.loop.epoch_metrics, with '_'
    for '/'), numbered from 1: 'epoch 3/12  train loss 1.2345  val loss ...  31.2 s'."""
    return (f"epoch {int(report['epoch']) + 1}/{epochs}  train loss {report['train_loss']:.4f}  "
            f"val loss {report['val_loss']:.4f}  top-1 {report['val_top1']:.4f}  top-5 {report['val_top5']:.4f}  "
            f"lr {report['lr']:.2e}  {report['throughput_images_per_s']:.0f} img/s  "
            f"data wait {100 * report['throughput_data_wait_fraction']:.0f}%  {report['time_epoch_s']:.1f} s")


def failure_line(errors: dict, *, resume_epoch: int, epochs: int, restart: int, max_failures: int) -> str:
    """A worker group failure that Ray Train restarts from the last checkpoint, in one line.
    resume_epoch: 0-based, the epoch the restarted workers begin with."""
    rank, err = min(errors.items(), key=lambda item: item[0])
    limit = "unlimited" if max_failures < 0 else str(max_failures)
    return (f"worker {rank} failed ({describe_failure(err)}); resuming at epoch {resume_epoch + 1}/{epochs} "
            f"from the last checkpoint (restart {restart}, run.max_failures={limit})")


def describe_failure(err: BaseException) -> str:
    """A lost worker node, a dead worker process, or the last line of what the loop raised."""
    cause = getattr(err, "health_check_failure", None) or err  # Ray Train's wrapper of a failed poll
    if isinstance(cause, ray.exceptions.ActorUnavailableError):
        # What Ray raises when the worker's node stops answering (a lost or preempted node, or a
        # network cut), before it has declared that node dead.
        return f"its node stopped answering: {type(cause).__name__}"
    if isinstance(cause, ray.exceptions.ActorDiedError) and cause.preempted:
        return f"its node was preempted: {type(cause).__name__}"
    if isinstance(cause, ray.exceptions.ActorDiedError) and "node has died" in str(cause):  # GCS's words
        return f"its node died: {type(cause).__name__}"
    if isinstance(cause, ray.exceptions.RayActorError):
        return f"its process died: {type(cause).__name__}"

    lines = [line for line in redact(str(cause)).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(cause).__name__


class Board:
    """The mailbox: posts from any process of the run, taken in order by the driver."""

    def __init__(self):
        self._events: list[tuple] = []

    def post(self, event: tuple) -> None:
        self._events.append(event)

    def take(self) -> list[tuple]:
        events, self._events = self._events, []
        return events


@dataclass(frozen=True)
class Channel:
    """What the train loop holds (picklable): its way to the driver's terminal."""
    board: object  # the Board actor's handle

    def say(self, text: str) -> None:
        """A line for the user (a tracking outage, ...), printed by the driver on stderr."""
        self.board.post.remote(("note", text))

    def steps(self, epoch: int) -> Callable[[int], None]:
        """The engine's `before_step(step)` for `epoch`: posts how many steps are done, at most every TICK_S."""
        last = [float("-inf")]

        def tick(step: int) -> None:
            now = time.monotonic()
            if now - last[0] >= TICK_S:
                last[0] = now
                self.board.post.remote(("step", epoch, step))  # fire and forget: never waits on the driver

        return tick


class EpochReporter(UserCallback):
    """Runs in Ray Train's controller: each epoch's report (rank 0's metrics, the same reduced
    numbers on every rank) and each worker failure that will be retried, to the Board."""

    def __init__(self, board, *, first_epoch: int, epochs: int, max_failures: int):
        self.board = board
        self.last_epoch = first_epoch - 1  # the last epoch with a checkpoint: a restart resumes after it
        self.epochs = epochs
        self.max_failures = max_failures
        self.failures = 0

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        report = metrics[0]
        self.last_epoch = int(report["epoch"])
        self.board.post.remote(("epoch", dict(report)))

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        # Mirrors Ray Train's count against FailureConfig.max_failures: a failure it will not retry
        # is the run's error, which the driver reports (alexnet.train.fit).
        self.failures += 1
        if 0 <= self.max_failures < self.failures:
            return
        self.board.post.remote(("failure", failure_line(worker_exceptions, resume_epoch=self.last_epoch + 1,
                                                        epochs=self.epochs, restart=self.failures,
                                                        max_failures=self.max_failures)))


@dataclass
class Display:
    """Draws the events of one run. `images_per_step`: the global batch (all workers)."""
    epochs: int
    steps: int
    images_per_step: int
    out: object = None
    interactive: bool | None = None  # None: stdout is a terminal
    plain_every_s: float = PLAIN_EVERY_S
    clock: Callable[[], float] = time.monotonic
    finished: int = -1  # the last epoch whose line was printed (0-based)
    _bar: object = field(default=None, repr=False)
    _epoch: int | None = None  # the epoch being drawn
    _started: float = 0.0
    _last_line: float = 0.0

    def __post_init__(self):
        self.out = self.out or sys.stdout
        if self.interactive is None:
            self.interactive = bool(getattr(self.out, "isatty", lambda: False)())

    def handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "step":
            self._step(event[1], event[2])
        elif kind == "epoch":
            self._end_bar()
            self.finished = max(self.finished, int(event[1]["epoch"]))
            self._write(epoch_line(event[1], self.epochs), self.out)
        else:  # note, failure
            self._end_bar()
            self._write(event[1], sys.stderr)

    def close(self) -> None:
        self._end_bar()

    def _step(self, epoch: int, done: int) -> None:
        if epoch <= self.finished:
            return  # a late tick of an epoch whose line is out
        if epoch != self._epoch:
            self._end_bar()
            self._epoch, self._started = epoch, self.clock()
            self._last_line = self._started
            if self.interactive:

                self._bar = tqdm(total=self.steps * self.images_per_step, desc=f"epoch {epoch + 1}/{self.epochs}",
                                 unit="img", unit_scale=True, leave=False, dynamic_ncols=True, file=self.out)
        images = done * self.images_per_step
        if self._bar is not None:
            self._bar.update(images - self._bar.n)
        elif self.clock() - self._last_line >= self.plain_every_s:

            self._last_line = self.clock()
            self._write(tqdm.format_meter(images, self.steps * self.images_per_step, self._last_line - self._started,
                                          prefix=f"epoch {epoch + 1}/{self.epochs}", unit="img",
                                          bar_format=PLAIN_FORMAT), self.out)

    def _end_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._epoch = None, None

    def _write(self, line: str, file) -> None:

        tqdm.write(line, file=file)  # above any live bar
        file.flush()


class RunView:
    """The driver's side of one `fit`: starts the Board, hands out its ends, polls it, stops it."""

    def __init__(self, display: Display):
        self.display = display
        # On the driver's node: a Board on a worker node would die with that node, and with it
        # the line that says the node was lost and every line after.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.board = ray.remote(num_cpus=0)(Board).options(scheduling_strategy=here).remote()
        self.channel = Channel(self.board)
        self._pending = None
        self._gone = False

    def reporter(self, *, first_epoch: int, max_failures: int) -> EpochReporter:
        return EpochReporter(self.board, first_epoch=first_epoch, epochs=self.display.epochs,
                             max_failures=max_failures)

    def poll(self) -> None:
        """Draw whatever arrived; never blocks."""
        if self._gone:
            return
        if self._pending is None:
            self._pending = self.board.take.remote()
        ready, _ = ray.wait([self._pending], timeout=0)
        if ready:
            self._draw(ready[0])

    def close(self, *, last_epoch: int | None = None, timeout_s: float = 10.0) -> None:
        """Draw what is left (waiting, up to timeout_s, for the line of `last_epoch`), then stop the Board."""
        deadline = time.monotonic() + timeout_s
        try:
            while not self._gone:
                ref = self._pending if self._pending is not None else self.board.take.remote()
                self._draw(ref, timeout=max(0.1, deadline - time.monotonic()))
                if last_epoch is None or self.display.finished >= last_epoch or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            self.display.close()
            ray.kill(self.board)

    def _draw(self, ref, timeout: float | None = None) -> None:
        self._pending = None
        try:
            events = ray.get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            return
        except ray.exceptions.RayError:
            self._gone = True  # the Board is gone: the terminal misses lines, the run goes on
            return
        for event in events:
            self.display.handle(event)
