"""alexnet.train.device_input.DeviceFeeder: a real background thread over real iterators (CPU device in
CI; the CUDA test runs on the GPU machine)."""

from __future__ import annotations

import gc
import threading
import time

import pytest
import torch

from alexnet.train.device_input import DeviceFeeder


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def _wait_gone(name: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while _threads(name) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not _threads(name)


def _square(batch: int) -> dict:
    return {"image": torch.full((4, 3, 2, 2), batch, dtype=torch.uint8), "label": torch.arange(4) + batch}


def test_batches_come_out_in_order_and_the_thread_ends():
    feeder = DeviceFeeder(range(25), _square, "cpu", name="feeder-order")
    got = [int(b["image"][0, 0, 0, 0]) for b in feeder]
    assert got == list(range(25))
    assert feeder.stats.batches == 25 and feeder.stats.images == 100
    assert feeder.stats.transform_cpu_s >= 0 and feeder.stats.source_cpu_s >= 0
    assert _wait_gone("feeder-order")
    with pytest.raises(StopIteration):
        next(feeder)


def test_the_next_batch_is_made_while_the_consumer_holds_this_one():
    """The point of the feeder: batch k+1 is transformed while the consumer still works on batch
    k (no timing: the transform of batch 1 signals, and the consumer waits for that signal before
    it asks for batch 1)."""
    made = [threading.Event() for _ in range(3)]

    def transform(k):
        made[k].set()
        return _square(k)

    with DeviceFeeder(range(3), transform, "cpu", depth=1, name="feeder-overlap") as feeder:
        first = next(feeder)
        assert made[1].wait(timeout=30), "batch 1 was not made while batch 0 was in use"
        assert int(first["label"][0]) == 0 and int(next(feeder)["label"][0]) == 1


@pytest.mark.fault("the feeder's transform raises on batch 3", inputs=1,
                   outcome="batches 0-2 delivered, then the error with its traceback in the consumer; the "
                           "thread ends")
def test_a_transform_error_is_raised_in_the_consumer_after_the_earlier_batches():
    def transform(k):
        if k == 3:
            raise ValueError("row 7 of batch 3 is not a JPEG")
        return _square(k)

    feeder = DeviceFeeder(range(10), transform, "cpu", name="feeder-error")
    got = [int(next(feeder)["label"][0]) for _ in range(3)]
    with pytest.raises(ValueError, match="row 7 of batch 3") as err:
        next(feeder)
    assert got == [0, 1, 2]
    assert any(frame.name == "transform" for frame in __import__("traceback").extract_tb(err.value.__traceback__))
    assert _wait_gone("feeder-error")
    with pytest.raises(StopIteration):
        next(feeder)


@pytest.mark.fault("the feeder's source raises after a batch", inputs=1,
                   outcome="the batch delivered, then the error in the consumer; the thread ends")
def test_a_source_error_is_raised_in_the_consumer():
    def source():
        yield 0
        raise OSError("the Parquet shard vanished")

    feeder = DeviceFeeder(source(), _square, "cpu", name="feeder-source-error")
    assert int(next(feeder)["label"][0]) == 0
    with pytest.raises(OSError, match="shard vanished"):
        next(feeder)
    assert _wait_gone("feeder-source-error")


def test_close_stops_a_thread_blocked_on_a_full_queue_and_closes_the_source():
    closed = threading.Event()

    def endless():
        try:
            k = 0
            while True:
                yield k
                k += 1
        finally:
            closed.set()

    feeder = DeviceFeeder(endless(), _square, "cpu", depth=2, name="feeder-close")
    next(feeder)
    time.sleep(0.2)  # let the thread fill the queue and block on it
    feeder.close()
    assert not _threads("feeder-close") and closed.is_set()
    feeder.close()  # idempotent
    with pytest.raises(StopIteration):
        next(feeder)


def test_close_waits_for_the_batch_in_progress():
    started = threading.Event()

    def slow(k):
        started.set()
        time.sleep(0.3)
        return _square(k)

    feeder = DeviceFeeder(range(100), slow, "cpu", name="feeder-slow")
    assert started.wait(timeout=30)
    feeder.close()
    assert not _threads("feeder-slow")


def test_an_abandoned_feeder_stops_its_thread_when_collected():
    feeder = DeviceFeeder(iter(lambda: 1, None), _square, "cpu", name="feeder-abandoned")  # endless
    next(feeder)
    del feeder
    gc.collect()
    assert _wait_gone("feeder-abandoned")


def test_depth_must_hold_a_batch():
    with pytest.raises(ValueError, match="depth=0"):
        DeviceFeeder(range(3), _square, "cpu", depth=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (CI has none; the GPU machine runs this)")
def test_cuda_batches_are_made_on_a_side_stream_and_safe_to_use_on_the_consumers():
    """The transform runs on the feeder's own stream; the consumer's stream waits for it, and the
    memory of a batch the consumer still reads is not reused by the next transforms (record_stream):
    each batch's values survive a slow kernel queued on the consumer's stream."""
    device = torch.device("cuda")
    streams = []

    def transform(k):
        streams.append(torch.cuda.current_stream(device))
        big = torch.full((64, 1024, 1024), float(k), device=device)  # 256 MB, freed right after use
        return {"image": big[:, :1, :8].clone(), "label": torch.full((64,), k, device=device)}

    consumer = torch.cuda.current_stream(device)
    slow = torch.randn(4096, 4096, device=device)
    with DeviceFeeder(range(40), transform, device, depth=2, name="feeder-cuda") as feeder:
        sums = []
        for k, batch in enumerate(feeder):
            for _ in range(3):
                slow = slow @ slow / 4096  # keeps the consumer's stream busy while the feeder goes on
            sums.append((batch["image"].sum() / batch["image"].numel(), batch["label"].float().mean()))
    torch.cuda.synchronize()
    assert all(s != consumer for s in streams)
    assert [(round(float(a)), round(float(b))) for a, b in sums] == [(k, k) for k in range(40)]
