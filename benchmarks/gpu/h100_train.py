"""AlexNet on one GPU through the real pipeline (Parquet -> Ray Data -> TorchTrainer, 1 worker),
against the same model on synthetic tensors already in GPU memory (compute only), in one run.

Generates JPEGs at 256 px, ingests them with pipelines.ingest, trains with bf16 autocast and
channels_last (eager with CPU decode, eager with data.decode=gpu, then
torch.compile), reads images/s and the data-wait fraction per epoch from
MLflow, and computes MFU = images/s x 4.3 GFLOP (forward + backward of torchvision's AlexNet at
224 px) / peak. Also times pipelines.augment.decode_jpeg_batch (nvJPEG) once.

    python benchmarks/gpu/h100_train.py --out DIR [--images 6000] [--epochs 3] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
GFLOP_PER_IMAGE = 4.3  # training step (fwd + bwd ~ 3x the 0.71 GMAC forward x 2 FLOP/MAC), 224 px


def _gen(args):
    from pipelines.synthetic import write_demo_images

    root, per_class, seed = args
    return str(write_demo_images(Path(root), per_class=per_class, size=256, seed=seed))


def make_images(dest: Path, n: int, procs: int) -> Path:
    parts = [(str(dest / f"part{i}"), max(1, n // 6 // procs), i) for i in range(procs)]
    with ProcessPoolExecutor(procs) as pool:
        roots = list(pool.map(_gen, parts))
    merged = dest / "all"
    for i, root in enumerate(roots):
        for cls in Path(root).iterdir():
            (merged / cls.name).mkdir(parents=True, exist_ok=True)
            for f in cls.iterdir():
                shutil.move(str(f), merged / cls.name / f"{i}-{f.name}")
    return merged


def compute_only(compile_: bool, batch: int, steps: int = 60) -> float:
    import torch
    import torch.nn.functional as F

    from alexnet import build_model

    model = build_model("torchvision", 6).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    run = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (batch,), device="cuda")
    for i in range(steps + 10):
        if i == 10:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(run(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu-out")
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/gpu-bench")
    import ray
    import torch
    from mlflow.tracking import MlflowClient

    from alexnet.config import load_config
    from alexnet.trainer import check_inputs, fit
    from pipelines.augment import decode_jpeg_batch
    from pipelines.ingest import IngestOptions, ingest

    result = {"machine": {"gpu": torch.cuda.get_device_name(0), "cpus": os.cpu_count(), "cpu": platform.processor(),
                          "torch": torch.__version__, "ray": ray.__version__},
              "peak_tflops_bf16": args.peak_tflops, "gflop_per_image": GFLOP_PER_IMAGE, "batch": args.batch}
    t = time.perf_counter()
    src = make_images(work / "src", args.images, min(12, os.cpu_count() or 1))
    result["generate_s"] = time.perf_counter() - t
    ray.init(num_cpus=os.cpu_count(), num_gpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t = time.perf_counter()
    summary = ingest(src, work / "ds", IngestOptions(resize=256, val_fraction=0.1, shard_mb=8))
    result["ingest_s"], result["images"] = time.perf_counter() - t, summary.added

    data = sorted((work / "src" / "all").rglob("*.jpg"))[:256]
    blobs = [p.read_bytes() for p in data]
    for _ in range(2):
        torch.cuda.synchronize(); t = time.perf_counter()
        decoded = decode_jpeg_batch(blobs, "cuda"); torch.cuda.synchronize()
        gpu_decode = time.perf_counter() - t
    result["gpu_decode"] = {"images": len(blobs), "images_per_s": len(blobs) / gpu_decode,
                            "shape0": list(decoded[0].shape), "device": str(decoded[0].device)}

    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("gpu-bench")
    modes = [("eager", False, "cpu"), ("eager_gpu_decode", False, "gpu")]
    modes += [] if args.skip_compile else [("compile", True, "cpu")]
    for mode, compile_, decode in modes:
        # torchvision's recipe (SGD 0.01 at batch 256, RandomResizedCrop) on one GPU
        cfg = load_config("torchvision", [f"data.path={work / 'ds'}", f"data.decode={decode}", "run.num_workers=1",
                                          f"optim.batch_size={args.batch}", f"optim.epochs={args.epochs}",
                                          f"run.compile={compile_}", "run.keep_checkpoints=1"])
        run_id = client.create_run(exp).info.run_id
        t = time.perf_counter()
        outcome = fit(cfg, check_inputs(cfg), run_name=f"gpu-{mode}", storage=str(work / "runs"), tracking_uri=uri,
                      run_id=run_id)
        wall = time.perf_counter() - t
        hist = {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
                for k in ("throughput/images_per_s", "throughput/data_wait_fraction", "time/epoch_s", "val/top1")}
        ips = hist["throughput/images_per_s"][-1]  # last epoch: warm (compiled, cudnn tuned)
        result[f"pipeline_{mode}"] = {"per_epoch": hist, "images_per_s": ips, "fit_wall_s": wall,
                                      "mfu": ips * GFLOP_PER_IMAGE * 1e9 / (args.peak_tflops * 1e12),
                                      "val_top1": outcome.val_top1}
        key = f"compute_only_{'compile' if compile_ else 'eager'}"
        if key not in result:
            base = compute_only(compile_, args.batch // cfg.run.num_workers)
            result[key] = {"images_per_s": base, "mfu": base * GFLOP_PER_IMAGE * 1e9 / (args.peak_tflops * 1e12)}
        result[f"ratio_{mode}"] = ips / result[key]["images_per_s"]
        (out / "h100_train.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
