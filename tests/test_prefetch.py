"""Primed: the next epoch's first batch is fetched in the background, before anyone iterates."""

from __future__ import annotations

import threading

import pytest

from alexnet.prefetch import Primed


def test_the_first_item_is_fetched_before_iteration_then_everything_comes_in_order():
    fetched = threading.Event()
    threads = []

    def make():
        def gen():
            for i in range(5):
                threads.append(threading.current_thread().name)
                if i == 0:
                    fetched.set()
                yield i
        return gen()

    primed = Primed(make, name="epoch-3-input")
    assert fetched.wait(10), "nothing was fetched before iteration"
    assert list(primed) == [0, 1, 2, 3, 4]
    assert threads[0] == "epoch-3-input"  # the first in the background,
    assert set(threads[1:]) == {threading.current_thread().name}  # the rest by the consumer


def test_an_error_while_fetching_is_raised_to_the_consumer():
    def make():
        raise OSError("shard unreadable: /data/train-00003.parquet")

    primed = Primed(make)
    with pytest.raises(OSError, match="train-00003"):
        next(iter(primed))


def test_an_empty_epoch_yields_nothing():
    assert list(Primed(lambda: iter(()))) == []
