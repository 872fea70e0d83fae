"""Training throughput of the full path against a plain PyTorch loop, in one run.

Full path: Parquet -> Ray Data (decode + augment on CPU tasks) -> TorchTrainer (1 worker, then 2),
as `alexnet train` runs it; images/s and the data-wait fraction are the worker's own per-epoch
metrics (read back from MLflow), the median over epochs after the first.
Baseline: the same model, optimiser and batch size in one process, on the same training images
decoded and augmented once into memory beforehand (so it pays no decoding at all), using every core,
after Ray has been shut down (no idle daemons beside it).
Second baseline: the same loop fed by a torch DataLoader whose worker processes (one per core)
decode and augment every epoch with the same decoder and preset (`input_pipeline_bench.ParquetImages`), what a user
would write instead. All run on the whole machine, so the ratios are also per-core ratios.

    .venv/bin/python benchmarks/train_bench.py [--images-per-class 120] [--epochs 4] [--workers 1,2] [--out benchmarks/results/train_bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def plain_loop(cfg, info, epochs: int) -> float:
    """Images/s of a single-process loop over pre-decoded uint8 tensors (epoch 0 is warm-up)."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from alexnet import build_model
    from alexnet.train.epochs import train_one_epoch
    from alexnet.lr_schedule import scaled_lr
    from alexnet.train.loop import make_optimizer
    from pipelines.read.augment import apply_preset
    from pipelines.read.loader import train_preset

    table = pq.read_table(info.shard_paths("train"), columns=["id", "image", "label", "height", "width"]).to_pydict()
    preset = train_preset(info, **cfg.data.augmentation)
    batch = apply_preset({k: np.asarray(v, dtype=object) if k in ("id", "image") else np.asarray(v) for k, v in table.items()},
                         preset=preset, seed=cfg.data.seed)
    images, labels = torch.from_numpy(batch["image"]), torch.from_numpy(batch["label"])
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = build_model(cfg.model.arch, info.num_classes, dropout=cfg.model.dropout, hidden=cfg.model.hidden)
    opt = make_optimizer(model.parameters(), cfg, scaled_lr(cfg.optim.lr, cfg.optim.batch_size))
    mean = torch.tensor(info.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(info.pixel_std).view(1, 3, 1, 1)
    b = cfg.optim.batch_size
    rates = []
    for epoch in range(epochs):
        order = torch.randperm(len(labels))
        batches = [{"image": images[order[i:i + b]], "label": labels[order[i:i + b]]}
                   for i in range(0, len(labels) - b + 1, b)]
        out = train_one_epoch(model, opt, batches, torch.device("cpu"), mean=mean, std=std, epoch=epoch)
        rates.append(out["images"] / out["seconds"])
    return statistics.median(rates[1:]) if len(rates) > 1 else rates[0]


def dataloader_loop(cfg, info, epochs: int) -> float:
    """Images/s of the same single-process training fed by a torch DataLoader whose worker
    processes (one per core, persistent) decode and augment every epoch (epoch 0 is warm-up)."""
    import torch
    from torch.utils.data import DataLoader

    from alexnet import build_model
    from alexnet.lr_schedule import scaled_lr
    from alexnet.train.epochs import train_one_epoch
    from alexnet.train.loop import make_optimizer
    from input_pipeline_bench import ParquetImages  # benchmarks/ is the script's folder
    from pipelines.read.loader import train_preset

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    data = ParquetImages(info, train_preset(info, **cfg.data.augmentation), seed=cfg.data.seed)
    loader = DataLoader(data, batch_size=cfg.optim.batch_size, shuffle=True, drop_last=True,
                        num_workers=os.cpu_count() or 1, persistent_workers=True)
    model = build_model(cfg.model.arch, info.num_classes, dropout=cfg.model.dropout, hidden=cfg.model.hidden)
    opt = make_optimizer(model.parameters(), cfg, scaled_lr(cfg.optim.lr, cfg.optim.batch_size))
    mean = torch.tensor(info.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(info.pixel_std).view(1, 3, 1, 1)
    rates = []
    for epoch in range(epochs):
        batches = ({"image": images, "label": labels} for images, labels in loader)
        out = train_one_epoch(model, opt, batches, torch.device("cpu"), mean=mean, std=std, epoch=epoch)
        rates.append(out["images"] / out["seconds"])
    return statistics.median(rates[1:]) if len(rates) > 1 else rates[0]


def pipeline(cfg, info, workers: int, work: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from alexnet.config import load_config
    from alexnet.train.fit import fit
    from pipelines.read.loader import train_preset

    cfg = load_config("demo", [f"data.path={info.path}", f"optim.epochs={cfg.optim.epochs}",
                               f"run.num_workers={workers}", "run.keep_checkpoints=1"])
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench") or client.get_experiment(client.create_experiment("bench"))
    run_id = client.create_run(exp.experiment_id).info.run_id
    t = time.perf_counter()
    fit(cfg, info, train_preset(info, **cfg.data.augmentation), run_name=f"bench-{workers}w", storage=str(work / "runs"),
        tracking_uri=uri, run_id=run_id)
    wall = time.perf_counter() - t
    hist = {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
            for k in ("throughput/images_per_s", "throughput/data_wait_fraction", "time/epoch_s")}
    steady = lambda xs: statistics.median(xs[1:]) if len(xs) > 1 else xs[0]  # noqa: E731
    return {"workers": workers, "images_per_s": steady(hist["throughput/images_per_s"]),
            "data_wait_fraction": steady(hist["throughput/data_wait_fraction"]),
            "epoch_s": steady(hist["time/epoch_s"]), "fit_wall_s": wall, "per_epoch": hist}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images-per-class", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts for the full path")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "train_bench.json"))
    args = ap.parse_args()
    import ray

    from alexnet.config import load_config
    from alexnet.train.fit import check_inputs
    from pipelines.ingest import IngestOptions, ingest
    from alexnet.demo import write_demo_images

    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    src = write_demo_images(work / "src", per_class=args.images_per_class, size=72, seed=0)
    ingest(src, work / "ds", IngestOptions(resize=72, val_fraction=0.2))
    cfg = load_config("demo", [f"data.path={work / 'ds'}", f"optim.epochs={args.epochs}"])
    info = check_inputs(cfg)
    runs = [pipeline(cfg, info, int(w), work) for w in args.workers.split(",")]
    ray.shutdown()  # the baseline gets the machine to itself: no idle Ray daemons beside it
    base = plain_loop(cfg, info, args.epochs)
    fed = dataloader_loop(cfg, info, args.epochs)
    better = max(base, fed)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    result = {
        "machine": {"cores": os.cpu_count(), "cpu": cpu, "load_avg_1m": os.getloadavg()[0]},
        "recipe": "demo", "crop": cfg.data.crop, "batch_size": cfg.optim.batch_size,
        "train_images": info.split_size("train"), "epochs": args.epochs,
        "plain_loop_images_per_s": base, "dataloader_loop_images_per_s": fed,
        "pipeline": runs,
        **{f"ratio_{r['workers']}_worker{'s' if r['workers'] > 1 else ''}": r["images_per_s"] / base for r in runs},
        **{f"ratio_{r['workers']}_worker{'s' if r['workers'] > 1 else ''}_vs_better_baseline": r["images_per_s"] / better
           for r in runs},
        "scaling_over_first": {r["workers"]: r["images_per_s"] / runs[0]["images_per_s"] for r in runs[1:]},
        "goal": "ratio_1_worker_vs_better_baseline >= 0.9 (issue 22; per core: all use the whole machine)",
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "pipeline"}, indent=2))
    for r in runs:
        print(f"{r['workers']} worker(s): {r['images_per_s']:.1f} img/s, data wait {r['data_wait_fraction']:.0%}, "
              f"epoch {r['epoch_s']:.1f} s")


if __name__ == "__main__":
    main()
