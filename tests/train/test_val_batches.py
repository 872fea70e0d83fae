"""A train worker's val batches: streamed once from a real Ray dataset and replayed while they fit
the budget, streamed every epoch when they do not; the workers agree on which (a real 2-process
gloo group)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from alexnet.train.val_batches import ValBatches, _all_workers
from pipelines.dataset import open_dataset
from pipelines.read.loader import val_dataset


@pytest.fixture(scope="module")
def val(shapes_dataset):
    return val_dataset(open_dataset(shapes_dataset), crop=48, resize=64)


def _epoch(batches: ValBatches) -> list[dict]:
    return list(batches.epoch())


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("image", "label"))


def test_a_split_that_fits_is_streamed_once_and_replayed(val):
    batches = ValBatches(val, batch_size=8, device=torch.device("cpu"))
    first, second, third = _epoch(batches), _epoch(batches), _epoch(batches)
    assert batches.streams == 1
    assert sum(len(b["label"]) for b in first) == val.count() and first[0]["image"].dtype == torch.uint8
    assert _same(first, second) and _same(first, third)


def test_a_split_over_the_budget_is_streamed_every_epoch(val):
    batches = ValBatches(val, batch_size=8, device=torch.device("cpu"), budget_bytes=3 * 48 * 48 * 8)
    first, second = _epoch(batches), _epoch(batches)
    assert batches.streams == 2 and batches.kept is None
    assert _same(first, second)


def test_a_pass_cut_short_is_not_kept(val):
    batches = ValBatches(val, batch_size=8, device=torch.device("cpu"))
    next(batches.epoch())  # a consumer that stopped after one batch
    assert batches.kept is None
    whole = _epoch(batches)
    assert batches.streams == 2 and sum(len(b["label"]) for b in whole) == val.count()
    assert _same(_epoch(batches), whole) and batches.streams == 2


def _vote(rank: int, port: int, flags: list[bool], out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        out.put((rank, _all_workers(flags[rank], torch.device("cpu")), _all_workers(True, torch.device("cpu"))))
    finally:
        dist.destroy_process_group()


def test_the_workers_keep_their_batches_only_if_all_of_them_fit():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_vote, args=(rank, port, [True, False], out)) for rank in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results == [(0, False, True), (1, False, True)]
    assert not _all_workers(False, torch.device("cpu")) and _all_workers(True, torch.device("cpu"))
