"""One epoch of training and one pass of evaluation: plain PyTorch, explicit arguments.

Both return sums, not means, so the caller can add them up across workers before dividing
(a mean of per-worker means is wrong when workers see different counts).
"""

from __future__ import annotations

import math
import time
from typing import Iterable

import torch
import torch.nn.functional as F


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the message names the epoch and step."""


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 NCHW (as shipped from the data workers) -> normalised float on the device."""
    x = images.float().div_(255.0).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of rows whose label is among the top-k logits, for each k (k capped at classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [hits[:, : min(k, logits.shape[1])].any(dim=1).sum() for k in ks]


def train_one_epoch(model, optimizer, batches: Iterable[dict], device, *, mean, std, epoch: int,
                    label_smoothing: float = 0.0, amp_dtype=None, channels_last: bool = False,
                    before_step=None, check_every: int = 50) -> dict:
    """Returns sums over this worker's batches: loss_sum, images, seconds, data_wait_s.

    A non-finite loss raises NonFiniteLoss naming the epoch and the first bad step. The first bad
    step is tracked on the device (no sync); it is read every `check_every` steps and at the end."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    images = 0
    wait = 0.0
    step = -1
    start = time.perf_counter()
    fetch_start = start
    for step, batch in enumerate(batches):
        wait += time.perf_counter() - fetch_start
        x = normalize(batch["image"].to(device, non_blocking=True), mean, std, channels_last)
        y = batch["label"].to(device, non_blocking=True)
        if before_step is not None:
            before_step(step)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss = loss.detach().float()
        loss_sum += loss * y.shape[0]
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
        images += y.shape[0]
        if step % check_every == check_every - 1:
            _raise_if_bad(first_bad, epoch)  # .item() inside: a CPU-GPU sync point, sampled
        fetch_start = time.perf_counter()
    _raise_if_bad(first_bad, epoch)
    total = loss_sum.item()  # sync point, once per epoch
    return {"loss_sum": total, "images": images, "seconds": time.perf_counter() - start, "data_wait_s": wait}


def _raise_if_bad(first_bad: torch.Tensor, epoch: int) -> None:
    bad = int(first_bad.item())
    if bad >= 0:
        raise NonFiniteLoss(f"the training loss became NaN or inf at epoch {epoch}, step {bad}")


@torch.no_grad()
def evaluate_epoch(model, batches: Iterable[dict], device, *, mean, std, amp_dtype=None, channels_last: bool = False) -> dict:
    """Returns sums over this worker's batches: loss_sum, top1, top5, images.

    Images are (N, 3, H, W), or (N, K, 3, H, W) for K crops per image (ten-crop testing): then the
    prediction is the mean of the K crops' softmax, as in the paper."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    images = 0
    for batch in batches:
        images_u8 = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        crops = images_u8.shape[1] if images_u8.dim() == 5 else 1
        x = normalize(images_u8.flatten(0, 1) if crops > 1 else images_u8, mean, std, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        log_probs = F.log_softmax(logits.float(), dim=1)
        if crops > 1:  # log of the mean probability over the crops
            log_probs = torch.logsumexp(log_probs.view(y.shape[0], crops, -1), dim=1) - math.log(crops)
        loss_sum += F.nll_loss(log_probs, y, reduction="sum").double()
        c1, c5 = topk_correct(log_probs, y)
        top1 += c1
        top5 += c5
        images += y.shape[0]
    return {"loss_sum": loss_sum.item(), "top1": int(top1.item()), "top5": int(top5.item()), "images": images}


def reduce_sums(sums: dict, device) -> dict:
    """Add a dict of numbers across all workers (no-op without torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return dict(sums)
    keys = sorted(sums)
    t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return dict(zip(keys, t.tolist()))
