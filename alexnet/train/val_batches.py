"""A train worker's validation batches, epoch after epoch.

Validation crops are deterministic (rescale, centre crop: no randomness), so every epoch sees the
same uint8 batches. Streaming them from the worker's Ray Data shard costs one Ray Data execution
per epoch, and each execution starts slowly, slowest where the training stream's tasks hold the
CPUs (figures in benchmarks/RESULTS.md). So the first full pass keeps the batches in memory when
they fit in a budget, and later epochs replay them; a split too large for the budget (ImageNet's val is ~7.5 GB of 224 px crops) is streamed
every epoch, as before, where that start-up is noise next to the epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

# Host memory a worker may hold for its val crops (uint8 N x 3 x crop x crop: CIFAR-10's 10k val
# images at 32 px are 31 MB); 8 workers on a node hold at most 4 GiB together.
VAL_CACHE_BYTES = 512 * 2**20


class ValBatches:
    """`epoch()` -> an iterator over this worker's val batches ({"image": uint8, "label": int64}
    tensors on the CPU). The consumer must not modify them in place (evaluate_epoch does not)."""

    def __init__(self, shard, *, batch_size: int, device: torch.device, budget_bytes: int = VAL_CACHE_BYTES):
        self.shard = shard
        self.device = device  # for the workers' vote (NCCL reduces CUDA tensors only)
        self.batch_size = batch_size
        self.budget_bytes = budget_bytes
        self.kept: list[dict] | None = None  # set once a whole pass fitted the budget
        self.streams = 0  # Ray Data executions started (read by the tests)

    def epoch(self) -> Iterator[dict]:
        if self.kept is not None:
            return iter(self.kept)
        return self._stream()

    def _stream(self) -> Iterator[dict]:
        self.streams += 1
        kept: list[dict] | None = []
        size = 0
        for batch in self.shard.iter_torch_batches(batch_size=self.batch_size, device="cpu",
                                                   dtypes={"image": torch.uint8, "label": torch.long}):
            if kept is not None:
                size += sum(t.numel() * t.element_size() for t in batch.values())
                if size <= self.budget_bytes:
                    kept.append(batch)
                else:
                    kept = None  # over budget: streamed every epoch
            yield batch
        # Only a pass that ran to its end is the whole shard, and the workers keep theirs only if
        # all do: Ray Data's split serves an epoch once every worker has asked for it, so a worker
        # that streams while the others replay would wait forever.
        if _all_workers(kept is not None, self.device):
            self.kept = kept


def _all_workers(flag: bool, device) -> bool:
    """`flag` and'ed over the workers of the process group (just `flag` without one)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return bool(t.item())
