"""A sweep's space: read from YAML, checked against the typed config before anything starts, and
drawn the same way for the same seed."""

from __future__ import annotations

import pytest

from alexnet.config import load_config
from alexnet.sweep.run import SweepOptions, searcher
from alexnet.sweep.space import Dist, apply, check_space, describe, load_space, parse_space, to_tune
from pipelines.errors import UserError
from tests.support import cli_here


def test_a_space_reads_every_kind_of_distribution_as_its_numbers():
    space = parse_space({"optim.lr": "loguniform(1e-4, 1e-2)", "model.dropout": "uniform(0.2, 0.6)",
                         "optim.batch_size": "choice(64, 128, 256)", "model.hidden": "randint(64, 513)",
                         "optim.optimizer": "choice(sgd, adamw)"}, "t")
    # YAML 1.1 reads 1e-4 (no dot) as a string: the space means the number.
    assert space["optim.lr"] == Dist("loguniform", (1e-4, 1e-2))
    assert space["optim.batch_size"].candidates() == (64, 128, 256)
    assert space["model.hidden"].candidates() == (64, 512)  # randint's high is excluded, as in Tune
    assert describe(space)["optim.optimizer"] == "choice('sgd', 'adamw')"
    assert list(to_tune(space)) == list(space)


@pytest.mark.parametrize("raw, named", [
    ({"optim.learning_rate": "uniform(0.1, 1)"}, "unknown config key 'optim.learning_rate'"),
    ({"optim.lr": "gaussian(0, 1)"}, "optim.lr: 'gaussian(0, 1)' is not a distribution"),
    ({"optim.lr": 0.01}, "optim.lr: 0.01 is not a distribution"),
    ({"optim.lr": "loguniform(0, 1)"}, "needs low > 0"),
    ({"optim.lr": "uniform(0.5, 0.1)"}, "needs finite low < high"),
    ({"optim.lr": "uniform(0.1)"}, "takes two numbers"),
    ({"optim.batch_size": "uniform(32, 256)"}, "optim.batch_size takes int values; uniform draws real numbers"),
    ({"optim.lr": "choice()"}, "choice() needs at least one value"),
    ({"data.path": "choice(a, b)"}, "data.path cannot be searched"),
    ({"optim.epochs": "randint(2, 9)"}, "optim.epochs cannot be searched"),
    ([], "expected a mapping of config keys"),
])
def test_a_bad_space_is_refused_naming_the_key(raw, named):
    with pytest.raises(UserError, match="^t: ") as err:
        parse_space(raw, "t")
    assert named in str(err.value)


def test_every_value_a_space_can_draw_is_checked_as_set_checks_it():
    base = load_config("smoke")
    check_space(parse_space({"optim.optimizer": "choice(sgd, adamw)", "model.dropout": "uniform(0, 0.9)"}, "t"), base, "t")
    with pytest.raises(UserError, match=r"optim.optimizer: choice\('sgd', 'rmsprop'\) can draw 'rmsprop'.*supported values"):
        check_space(parse_space({"optim.optimizer": "choice(sgd, rmsprop)"}, "t"), base, "t")
    with pytest.raises(UserError, match=r"model.dropout: uniform\(0.2, 1\) can draw 1.*expected 0 <= p < 1"):
        check_space(parse_space({"model.dropout": "uniform(0.2, 1)"}, "t"), base, "t")
    assert apply(base, {"optim.lr": 0.003, "optim.batch_size": 64}).optim.batch_size == 64


def test_the_same_seed_draws_the_same_trials_and_another_seed_others():
    from ray.tune.experiment import Experiment

    space = to_tune(parse_space({"optim.lr": "loguniform(1e-5, 1e-1)", "optim.batch_size": "choice(16, 32, 64)"}, "t"))

    def draws(seed: int) -> list[dict]:
        search = searcher(SweepOptions(trials=5, seed=seed), concurrent=5)
        search.add_configurations([Experiment("s", lambda config: None, config=space, num_samples=5)])
        return [search.next_trial().config for _ in range(5)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_the_cli_refuses_a_bad_space_in_one_line_exit_2(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: loguniform(1e-4, 1e-2)\nmodel.dropuot: uniform(0.1, 0.5)\n")
    out = cli_here("tune", "--recipe", "smoke", "--space", str(space), "--data", str(tmp_path), "--workdir", str(tmp_path / "w"))
    assert out.returncode == 2
    assert f"--space {space}: unknown config key 'model.dropuot'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()  # nothing written for a refused sweep
    assert "no such file" in cli_here("tune", "--recipe", "smoke", "--space", str(tmp_path / "none.yaml")).stderr
    resumed = cli_here("tune", "--resume", str(tmp_path), "--recipe", "smoke")
    assert resumed.returncode == 2 and "--recipe cannot change it" in resumed.stderr
    # Options with defaults too: a resumed sweep keeps its own, and one given is refused, not ignored.
    resumed = cli_here("tune", "--resume", str(tmp_path), "--trials", "3", "--seed", "0", "--max-concurrent", "0")
    assert resumed.returncode == 2, resumed.stderr
    assert "--trials, --max-concurrent, --seed cannot change it" in resumed.stderr
    assert "not a sweep folder" in cli_here("tune", "--resume", str(tmp_path)).stderr


def test_a_space_file_that_is_not_yaml_names_the_file(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: [unclosed\n")
    with pytest.raises(UserError, match=f"--space {space}: not valid YAML"):
        load_space(space)


def test_a_batch_size_the_dataset_cannot_fill_is_refused_before_ray(shapes_dataset, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("optim.batch_size: choice(16, 4096)\n")
    out = cli_here("tune", "--recipe", "smoke", "--space", str(space), "--data", str(shapes_dataset),
                   "--workdir", str(tmp_path / "w"))
    assert out.returncode == 2
    assert "optim.batch_size: choice(16, 4096) can draw 4096, which the run refuses: optim.batch_size=4096 is larger" in out.stderr


def test_a_trial_is_completed_early_stopped_failed_or_not_run_by_its_epochs_and_error():
    from alexnet.sweep.view import error_line, summarize, trial_line

    done = summarize("a_00000", {"optim.lr": 0.0031234}, 0.41, 6, epochs=6)
    stopped = summarize("a_00001", {"optim.lr": 1e-7}, 0.2, 2, epochs=6)
    failed = summarize("a_00002", {"optim.lr": 1e38}, None, 0, epochs=6,
                       error=error_line(RuntimeError("training diverged: loss nan at epoch 1\ntraceback...")))
    never = summarize("a_00003", {"optim.lr": 0.01}, None, 0, epochs=6)
    assert [s.reason for s in (done, stopped, failed, never)] == ["completed", "early-stopped", "failed", "not run"]
    assert trial_line(done, index=1, total=4, epochs=6) == (
        "trial 1/4 a_00000  optim.lr=0.003123  top-1 0.4100  6/6 epochs, completed")
    assert trial_line(failed, index=3, total=4, epochs=6).endswith(
        "no epoch finished  0/6 epochs, failed: training diverged: loss nan at epoch 1")


def test_a_store_that_errors_while_the_sweep_ends_is_one_line_not_a_second_exception(tmp_path, capsys):
    """A sweep that ends by an interrupt or Tune's own failure ends its trial runs if the store answers;
    if the store errors instead, the sweep's own error must still be the one that propagates."""
    from alexnet.sweep.view import end_running_children
    from alexnet.sweep.trial import SweepPlan

    plan = SweepPlan(name="s", base=load_config("smoke", []), storage=str(tmp_path / "runs"),
                     tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="alexnet", artifact_location=None,
                     parent_run_id="0" * 32, share={"CPU": 1})
    end_running_children(plan, "FAILED")  # the parent run does not exist: the store answers with an error
    out = capsys.readouterr().out
    assert out.startswith("the trial runs left RUNNING could not be ended (") and out.count("\n") == 1, out


def test_a_trial_that_does_not_fit_its_share_names_max_concurrent():
    """Two GPU workers per trial and 4 trials at once on a 2-GPU cluster: each trial has half a GPU."""
    from types import SimpleNamespace

    from alexnet.sweep.run import checked_share

    info = SimpleNamespace(split_size=lambda split: 1000, path="ds")  # what check_batches reads of a dataset
    base = load_config("smoke", ["run.num_workers=2"])
    space = parse_space({"optim.lr": "loguniform(1e-4, 1e-2)"}, "t")
    cluster = {"CPU": 16.0, "GPU": 2.0}
    assert checked_share(base, space, info, "t", cluster, 1)["GPU"] == 2.0
    with pytest.raises(UserError, match=r"^run.num_workers=2 with GPUs needs 2 GPUs; .*each of 4 trials at once "
                                        r"gets 0.5 of the cluster's 2 GPUs .*lower --max-concurrent\)$"):
        checked_share(base, space, info, "t", cluster, 4)


@pytest.mark.fault("`alexnet tune --tracking-uri` with a password in the URI", inputs=1,
                   outcome="exit 2, one line with the URI masked naming MLflow's credential variables; nothing written")
def test_a_tracking_uri_with_a_password_is_refused_before_anything_is_saved(tmp_path):
    """Tune pickles the trials' inputs, the URI among them, into the sweep's folder."""
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: loguniform(1e-4, 1e-2)\n")
    out = cli_here("tune", "--recipe", "smoke", "--space", str(space), "--data", str(tmp_path), "--workdir",
                   str(tmp_path / "w"), "--tracking-uri", "http://alice:s3cr3t@127.0.0.1:5000")
    assert out.returncode == 2 and "s3cr3t" not in out.stdout + out.stderr
    assert "--tracking-uri http://***@127.0.0.1:5000: a sweep saves its tracking URI" in out.stderr
    assert "MLFLOW_TRACKING_PASSWORD" in out.stderr and not (tmp_path / "w").exists()


def test_the_cli_names_every_sweep_option_and_the_trials_default():
    import dataclasses

    from alexnet.sweep.run import SweepOptions
    from jobs.commands.tune import SWEEP_OPTIONS
    from tests.support import cli_here

    assert SWEEP_OPTIONS == tuple(f.name for f in dataclasses.fields(SweepOptions))
    shown = " ".join(cli_here("tune", "--help").stdout.split())
    assert f"trials drawn from the space (default: {SweepOptions.trials})" in shown
