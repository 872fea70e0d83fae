"""What a sweep shows and records as its trials end: one line per trial on the driver's terminal, a
bar over the trials (on a terminal), and each trial's MLflow run ended with its stop reason.

Runs in the sweep's driver as a Ray Tune callback. Tune's own tables and Ray's logs stay out of
the terminal (jobs/output.py); `--verbose` brings them back.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ray import tune
from tqdm import tqdm

from alexnet.sweep.trial import METRIC, TIME_ATTR, SweepPlan, child_run_id
from alexnet.track.tracking import client_for, finish_run, set_tags
from pipelines.errors import first_line

COMPLETED, EARLY_STOPPED, FAILED, NOT_RUN = "completed", "early-stopped", "failed", "not run"
# MLflow status of a trial's run by its stop reason: a trial that ASHA stopped ran as asked.
RUN_STATUS = {COMPLETED: "FINISHED", EARLY_STOPPED: "FINISHED", FAILED: "FAILED"}


@dataclass(frozen=True)
class TrialSummary:
    trial_id: str
    params: dict  # the trial's draw, config key -> value
    reason: str  # COMPLETED | EARLY_STOPPED | FAILED | NOT_RUN
    best_top1: float | None  # the best epoch's val top-1, None before the first epoch
    epochs: int  # epochs run
    error: str = ""


def summarize(trial_id: str, params: dict, best_top1: float | None, epochs_run: int, *, epochs: int,
              error: str = "") -> TrialSummary:
    """A trial's outcome from its best val top-1 and epochs run (Tune's record of its reports) and its error."""
    if error:
        reason = FAILED
    elif not epochs_run:
        reason = NOT_RUN
    else:
        reason = COMPLETED if epochs_run >= epochs else EARLY_STOPPED
    return TrialSummary(trial_id, dict(params), reason, best_top1, epochs_run, error)


def of_trial(trial, *, epochs: int, error: str = "") -> TrialSummary:
    """A Tune trial's summary; Tune keeps each metric's best and last over all the trial's
    reports, across a resumed sweep's restarts."""
    best = (trial.metric_analysis.get(METRIC) or {}).get("max")
    return summarize(trial.trial_id, trial.config, best, int((trial.last_result or {}).get(TIME_ATTR) or 0),
                     epochs=epochs, error=error)


def error_line(error) -> str:
    """What a failed trial raised, in one line, out of Ray's wrapper (a RayTaskError keeps it as `cause`)."""
    if error is None:
        return ""
    return first_line(getattr(error, "cause", None) or error)


def trial_line(s: TrialSummary, *, index: int, total: int, epochs: int) -> str:
    """'trial 3/16 5f2a1_00002  optim.lr=0.0031 model.dropout=0.42  top-1 0.4120  6/12 epochs, early-stopped'."""
    params = params_text(s.params)
    score = f"top-1 {s.best_top1:.4f}" if s.best_top1 is not None else "no epoch finished"
    tail = f"{s.reason}: {s.error}" if s.error else s.reason
    return f"trial {index}/{total} {s.trial_id}  {params}  {score}  {s.epochs}/{epochs} epochs, {tail}"


def params_text(params: dict) -> str:
    """A trial's draw as the user reads it: 'optim.lr=0.003123 model.dropout=0.42'."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class SweepView(tune.Callback):
    """Tune's driver-side callback: prints each ended trial and ends its MLflow run."""

    def __init__(self, plan: SweepPlan, *, total: int):
        self.plan = plan
        self.total = total
        self.done = None  # trials ended so far, counted at the first step (a resumed sweep has some)
        self.bar = None

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks with the sweep's state (tuner.pkl): the bar is this process's.
        return {**self.__dict__, "bar": None, "done": None}

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self.done is None:
            self.done = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))
            self.bar = tqdm(total=self.total, initial=self.done, desc="trials", unit="trial", file=sys.stdout,
                            disable=not sys.stdout.isatty(), leave=False, dynamic_ncols=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, "")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, error_line(trial.get_pickled_error() or trial.get_error()) or "the trial failed")

    def on_experiment_end(self, trials, **info) -> None:
        if self.bar is not None:
            self.bar.close()

    def _ended(self, trial, error: str) -> None:
        self.done = (self.done or 0) + 1
        summary = of_trial(trial, epochs=self.plan.base.optim.epochs, error=error)
        line = trial_line(summary, index=self.done, total=self.total, epochs=self.plan.base.optim.epochs)
        if self.bar is not None and not self.bar.disable:
            self.bar.update(1)
            self.bar.write(line)
        else:
            print(line, flush=True)
        try:
            end_child_run(self.plan, trial.trial_id, summary)
        except Exception as err:  # the sweep goes on; the run is ended at the sweep's end, or by hand
            print(f"[tracking] trial {trial.trial_id}'s MLflow run not ended ({first_line(err)})", file=sys.stderr)


def end_child_run(plan: SweepPlan, trial_id: str, summary: TrialSummary) -> None:
    """The trial's MLflow run gets its stop reason and final status (it stays as it is if the trial never opened one)."""
    run_id = child_run_id(plan, trial_id)
    if run_id is None:
        return
    tags = {"sweep.stop_reason": summary.reason, "sweep.epochs_run": summary.epochs}
    set_tags(plan.tracking_uri, run_id, tags)
    finish_run(plan.tracking_uri, run_id, RUN_STATUS.get(summary.reason, "KILLED"))


def end_running_children(plan: SweepPlan, status: str) -> None:
    """Every trial run of the sweep still RUNNING gets `status` (an interrupted sweep's: KILLED;
    Tune's own failure: FAILED), if the store answers: an outage must not hide why the sweep
    ended, so a store error is one line and the sweep's own error is what propagates."""
    try:
        client = client_for(plan.tracking_uri)
        runs = client.search_runs([client.get_run(plan.parent_run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{plan.parent_run_id}' "
                                                f"and attributes.status = 'RUNNING'")
        for run in runs:
            finish_run(plan.tracking_uri, run.info.run_id, status, retry=False)
    except Exception as exc:  # noqa: BLE001 - the sweep's own error or interrupt is what propagates
        print(f"the trial runs left RUNNING could not be ended ({first_line(exc)}); a --resume ends them", flush=True)
