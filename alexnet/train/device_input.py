"""Batches for the train loop, made ready on its device while it trains on the previous ones.

With `data.decode: gpu` the train worker decodes and augments every batch itself
(pipelines.read.device_augment). Done in the train loop's thread, that work is data wait: the GPU idles
while the host prepares the next batch. `DeviceFeeder` moves it to a background thread, and on a
CUDA device onto a side stream, so that batch k+1's decode, resample and copies overlap the model's
step on batch k.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

log = logging.getLogger(__name__)

_ITEM, _END, _ERROR = range(3)
_POLL_S = 0.1  # how often a blocked put or get looks at the stop flag / the thread


@dataclass
class FeederStats:
    """What the feeder's thread did so far (written by that thread only). CPU times are the
    thread's own (`time.thread_time`): what it costs the host per batch, kernels excluded on a
    GPU, as they run on the device."""

    batches: int = 0
    images: int = 0  # rows of the batches' first tensor
    source_cpu_s: float = 0.0  # pulling host batches from the wrapped iterator
    transform_cpu_s: float = 0.0  # the transform (decode, augment, copies), CUDA launches included
    transform_wall_s: float = 0.0


class DeviceFeeder:
    """An iterator over `transform(b)` for every host batch `b` of `batches`, computed ahead by a
    background thread. Meant to be made once per run over one long-lived host iterator; the
    train loop takes each epoch's K batches from it:

        feeder = DeviceFeeder(host_batches, partial(augment_on_device, preset=p, device=d), d)
        try:
            for epoch in ...:
                for batch in itertools.islice(feeder, K):  # or next(feeder) K times
                    ...  # the time spent in next() is the data wait
        finally:
            feeder.close()

    Contract:
    - Order: batches come out in the order `batches` yields them, each transformed once.
    - Depth: at most `depth` finished batches wait in the queue (plus one being made), so the
      thread runs at most depth + 1 batches ahead of the consumer.
    - CUDA: the thread makes the device current and runs `transform` on its own side stream.
      A batch handed out is ready for the consumer's current stream: that stream waits (on the
      device, not the host) for an event recorded after the transform, and every CUDA tensor in
      the batch is `record_stream`-ed on it, so the caching allocator does not hand its memory
      to the side stream again while the consumer's queued kernels may still read it. The
      transform must return tensors it allocated (not views of memory it reuses). CPU and other
      devices: the same thread, no streams (how the tests run it).
    - Errors: an exception from `batches` or `transform` ends the thread and is raised by the
      `next()` that would have returned that batch; the feeder is then finished.
    - End: StopIteration once `batches` is exhausted (and on every later `next()`).
    - close(): stops the thread: it finishes the batch it is working on (waited for up to
      `timeout` seconds; after that it is left to end on its own, a daemon) and closes the
      iterator it made from `batches`; queued batches are dropped. Called on StopIteration, on
      an error, when the feeder is garbage-collected, and by `with DeviceFeeder(...)`;
      idempotent.
    - `stats`: a FeederStats of the thread's work so far (host CPU per batch and per image).
    """

    def __init__(self, batches: Iterable, transform: Callable[[Any], Any], device, *, depth: int = 2,
                 name: str = "device-input"):
        if depth < 1:
            raise ValueError(f"depth={depth}: at least one batch must fit in the queue")
        self.device = torch.device(device)
        self.stats = FeederStats()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        # The thread gets what it needs, not `self`: an abandoned feeder can then be collected.
        self._thread = threading.Thread(
            target=_produce, name=name, daemon=True,
            args=(batches, transform, self.device, stream, self._queue, self._stop, self.stats))
        self._finalizer = weakref.finalize(self, _shutdown, self._stop, self._queue, self._thread, 10.0)
        self._finalizer.atexit = False  # a daemon thread ends with the process anyway
        self._thread.start()

    def __iter__(self) -> "DeviceFeeder":
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        while True:
            try:
                kind, value, event = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():  # stopped without a word
                    self.close()
                    raise StopIteration from None
        if kind == _END:
            self.close()
            raise StopIteration
        if kind == _ERROR:
            self.close()
            raise value
        if event is not None:
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_event(event)
            for t in _tensors(value):
                if t.is_cuda:
                    t.record_stream(consumer)
        return value

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (see the class docstring); safe to call more than once."""
        self._finished = True
        if self._finalizer.alive:
            self._finalizer.detach()
            _shutdown(self._stop, self._queue, self._thread, timeout)

    def __enter__(self) -> "DeviceFeeder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _produce(batches: Iterable, transform, device, stream, out: queue.Queue, stop: threading.Event,
             stats: FeederStats) -> None:
    iterator = None
    try:
        on_device = torch.cuda.device(device) if stream is not None else contextlib.nullcontext()
        on_stream = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with on_device, on_stream:
            iterator = iter(batches)
            while not stop.is_set():
                cpu, wall = time.thread_time(), time.perf_counter()
                try:
                    host = next(iterator)
                except StopIteration:
                    break
                pulled = time.thread_time()
                made = transform(host)
                del host  # the host batch's memory is not held while this one waits in the queue
                event = None
                if stream is not None:
                    event = torch.cuda.Event()
                    event.record(stream)
                stats.source_cpu_s += pulled - cpu
                stats.transform_cpu_s += time.thread_time() - pulled
                stats.transform_wall_s += time.perf_counter() - wall
                stats.batches += 1
                stats.images += _rows(made)
                if not _put(out, (_ITEM, made, event), stop):
                    return
        _put(out, (_END, None, None), stop)
    except BaseException as err:  # handed to the consumer, raised by its next()
        _put(out, (_ERROR, err, None), stop)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # the iterator's own cleanup failing must not hide what ended it
                log.exception("closing the feeder's host iterator failed")


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item`, waiting for room unless the feeder is stopped; False if it was."""
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _shutdown(stop: threading.Event, out: queue.Queue, thread: threading.Thread, timeout: float) -> None:
    stop.set()
    _drain(out)
    if thread is not threading.current_thread():
        thread.join(timeout)
        if thread.is_alive():
            log.warning("the device input thread %s is still busy %.0f s after close(); leaving it to end on its own",
                        thread.name, timeout)
    _drain(out)  # a put that raced with the first drain


def _drain(out: queue.Queue) -> None:
    with contextlib.suppress(queue.Empty):
        while True:
            out.get_nowait()


def _tensors(value) -> list:
    """The tensors in a batch: a tensor, or a dict / list / tuple of them (nested)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _rows(value) -> int:
    tensors = _tensors(value)
    return int(tensors[0].shape[0]) if tensors and tensors[0].dim() else 0
