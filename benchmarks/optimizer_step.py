"""One training step of a recipe's network with torch's fused optimizer step against the default
(foreach) one, in one run: same model, batch and threads, random inputs (no data path at all).

`alexnet.train.loop.make_optimizer` uses the fused step on CPU and CUDA; this is the figure behind
that choice. Rounds alternate the two variants so drifting machine speed hits both alike; the
median step time of each is reported with their ratio.

    .venv/bin/python benchmarks/optimizer_step.py [--recipe demo] [--steps 30] [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time


def step_ms(net, opt, x, y, steps: int) -> float:
    import torch.nn.functional as F

    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="demo")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import torch

    from alexnet import build_model
    from alexnet.config import load_config

    torch.set_num_threads(args.threads)
    cfg = load_config(args.recipe)
    b, crop = cfg.optim.batch_size, cfg.data.crop
    x, y = torch.randn(b, 3, crop, crop), torch.randint(0, args.classes, (b,))
    variants = {}
    for fused in (False, True):
        torch.manual_seed(0)
        net = build_model(cfg.model.arch, args.classes, dropout=cfg.model.dropout, hidden=cfg.model.hidden)
        kind = torch.optim.SGD if cfg.optim.optimizer == "sgd" else torch.optim.AdamW
        extra = {"momentum": cfg.optim.momentum} if kind is torch.optim.SGD else {}
        opt = kind(net.parameters(), lr=1e-4, weight_decay=cfg.optim.weight_decay, fused=fused, **extra)
        step_ms(net, opt, x, y, 5)  # warm-up: allocator, kernels, optimizer state
        variants["fused" if fused else "foreach"] = (net, opt, [])
    for _ in range(args.rounds):
        for net, opt, times in variants.values():
            times.append(step_ms(net, opt, x, y, args.steps))
    median = {name: statistics.median(times) for name, (_, _, times) in variants.items()}
    print(json.dumps({
        "recipe": args.recipe, "optimizer": cfg.optim.optimizer, "hidden": cfg.model.hidden, "batch": b, "crop": crop,
        "threads": args.threads, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__, "step_ms_median": {k: round(v, 1) for k, v in median.items()},
        "images_per_s": {k: round(b / v * 1000) for k, v in median.items()},
        "speedup_fused": round(median["foreach"] / median["fused"], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
