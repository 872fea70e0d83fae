"""Ray Tune's own cost in a sweep: `alexnet tune`'s trials run by Tune's loop, against the same
trials run one after another without Tune, in one Ray session on this machine.

Both sides run `alexnet.sweep.trial.train_trial`, the trial's training run and its child MLflow
run (Ray Train start-up, every epoch, checkpoints). The sweep side is `alexnet.sweep.run.run_trials`
(Tune's loop: the trial actors, ASHA off, the per-trial lines and run endings); it draws its
learning rates first and the other side trains exactly those. The sides alternate which goes first.
Ratio = sweep wall time / the trials' summed wall time alone; Tune's own cost = ratio - 1 (goal:
under 10%). With --concurrent 2 the sweep runs two trials at a time on the same CPUs.

    .venv/bin/python benchmarks/tune_overhead.py [--trials 4] [--epochs 3] [--reps 3] [--concurrent 1]

The defaults make trials of ~25 s, mostly Ray Train's start-up; `--epochs 5 --images-per-class 1700`
gives epochs of ~10 s on 2 cores, the steady state the goal is about (benchmarks/RESULTS.md).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images-per-class", type=int, default=400)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/tune_overhead.json")
    args = parser.parse_args()
    # As `alexnet tune` runs Tune (jobs/commands/tune.py): no Tune tables, Ctrl-C stops.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    import ray

    from alexnet.config import load_config
    from alexnet.demo import write_demo_images
    from ray.tune.experiment import Experiment

    from alexnet.sweep.run import SweepOptions, run_trials, searcher, trial_share
    from alexnet.sweep.space import parse_space, to_tune
    from alexnet.sweep.trial import SweepPlan, train_trial
    from alexnet.track.tracking import open_run
    from jobs.runtime import Workdir, run_session
    from pipelines.ingest import IngestOptions, ingest

    root = Path(tempfile.mkdtemp(prefix="tune-overhead-"))
    work = Workdir(root / "work")
    src = write_demo_images(root / "src", per_class=args.images_per_class, seed=5,
                            classes=("circle", "hstripes", "vstripes"), sizes=(72, 96), class_hues=True)
    base = load_config("demo", [f"data.path={root / 'ds'}", f"optim.epochs={args.epochs}", "optim.warmup_epochs=0",
                                "model.hidden=128", "optim.schedule=constant", "run.register_as="])
    space = parse_space({"optim.lr": "loguniform(1e-4, 1e-2)"}, "benchmark")
    rows = []
    with run_session(work):
        ingest(src, root / "ds", IngestOptions(resize=72, val_fraction=0.1))
        cluster = ray.cluster_resources()
        for rep in range(args.reps):
            name = f"sweep{rep}"
            parent, _ = open_run(work.tracking_uri, experiment="bench", run_name=name, artifact_location=work.artifacts)
            plan = SweepPlan(name=name, base=base, storage=str(work.runs), tracking_uri=work.tracking_uri,
                             experiment="bench", artifact_location=work.artifacts, parent_run_id=parent,
                             share=trial_share(cluster, args.concurrent))
            options = SweepOptions(trials=args.trials, scheduler="none", max_concurrent=args.concurrent, seed=rep)

            def sweep() -> tuple[float, list]:
                start = time.perf_counter()
                trials = run_trials(plan, space, options, args.concurrent, str(work.runs / name), resume=False)
                return time.perf_counter() - start, [t.params for t in trials]

            def alone(draws: list) -> list[float]:
                times = []
                for i, params in enumerate(draws):
                    start = time.perf_counter()
                    train_trial(plan, params, f"alone{i}")
                    times.append(time.perf_counter() - start)
                return times

            if rep % 2 == 0:
                sweep_s, draws = sweep()
                alone_s = alone(draws)
            else:  # the same draws as the sweep will make: the seed fixes them
                search = searcher(options, args.trials)  # the draws do not depend on how many run at once
                search.add_configurations([Experiment("d", lambda c: None, config=to_tune(space), num_samples=args.trials)])
                draws = [search.next_trial().config for _ in range(args.trials)]
                alone_s = alone(draws)
                sweep_s, swept = sweep()
                assert swept == draws, "the sweep drew other trials"
            row = {"rep": rep, "first": "sweep" if rep % 2 == 0 else "alone", "sweep_s": round(sweep_s, 2),
                   "alone_s": [round(t, 2) for t in alone_s], "alone_sum_s": round(sum(alone_s), 2),
                   "ratio": round(sweep_s / sum(alone_s), 4)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    ratios = [r["ratio"] for r in rows]
    result = {
        "benchmark": "tune_overhead", "date": time.strftime("%Y-%m-%d"), "machine": _machine(),
        "trials": args.trials, "epochs": args.epochs, "concurrent": args.concurrent,
        "rows": rows, "median_ratio": statistics.median(ratios),
        "tune_cost": round(statistics.median(ratios) - 1, 4),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"median sweep / alone: {result['median_ratio']:.3f} (Tune's own cost {100 * result['tune_cost']:.1f}%) "
          f"over {len(rows)} runs; {args.out}")


def _machine() -> str:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.system()} {cpu or platform.machine()}, {os.cpu_count()} CPUs"


if __name__ == "__main__":
    main()
