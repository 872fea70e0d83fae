"""`alexnet train` rejects bad input with one line and exit 2, before any Ray resource is requested;
a diverged run and a tracking store that cannot be used at start are one line and exit 2 too."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from alexnet.config import load_config
from alexnet.train.fit import plan_placement
from jobs.cli import main
from pipelines.errors import UserError


@pytest.mark.fault("bad --set values and recipes: zero or negative workers, indivisible batch, "
                   "unknown arch or recipe, inf, 1e400, NaN, true, 2.5", inputs=12,
                   outcome="exit 2, one line naming the key and value; no work folder, Ray or MLflow started")
@pytest.mark.parametrize("extra, needle", [
    (["--set", "run.num_workers=0"], "run.num_workers=0"),
    (["--set", "run.num_workers=-1"], "run.num_workers=-1"),
    (["--set", "optim.batch_size=30", "--set", "run.num_workers=4"], "not divisible by run.num_workers=4"),
    (["--set", "model.arch=resnet"], "torchvision"),
    (["--recipe", "nope"], "shipped recipes"),
    (["--set", "optim.epochs=inf"], "optim.epochs='inf': expected a finite integer"),
    (["--set", "optim.epochs=.inf"], "optim.epochs=inf: expected a finite integer"),
    (["--set", "data.crop=1e400"], "data.crop='1e400': expected a finite integer"),
    (["--set", "optim.lr=nan"], "optim.lr='nan': expected a finite number"),
    (["--set", "run.system_metrics_interval=inf"], "run.system_metrics_interval='inf': expected a finite number"),
    (["--set", "optim.epochs=true"], "optim.epochs=True: expected an integer"),
    (["--set", "optim.epochs=2.5"], "optim.epochs=2.5: expected an integer"),
])
def test_bad_config_exits_2_with_one_line(shapes_dataset, tmp_path, capsys, extra, needle):
    rc = main(["train", "--recipe", "smoke", "--data", str(shapes_dataset), "--workdir", str(tmp_path / "w"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "w").exists()  # failed before the work directory, Ray or MLflow


@pytest.mark.fault("--data naming an empty folder", inputs=1,
                   outcome="exit 2 naming dataset.json")
def test_a_directory_that_is_not_a_dataset_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = main(["train", "--recipe", "smoke", "--data", str(tmp_path / "empty"), "--workdir", str(tmp_path / "w")])
    assert rc == 2 and "dataset.json" in capsys.readouterr().err


@pytest.mark.fault("a dataset.json whose class list drops classes its labels use", inputs=1,
                   outcome="exit 2 naming the labels")
def test_labels_outside_the_classes_exit_2(shapes_dataset, tmp_path, capsys):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(shapes_dataset, bad)
    meta = json.loads((bad / "dataset.json").read_text())
    meta["classes"] = meta["classes"][:2]  # labels 2..5 now lie outside the class list
    (bad / "dataset.json").write_text(json.dumps(meta))
    rc = main(["train", "--recipe", "smoke", "--data", str(bad), "--workdir", str(tmp_path / "w")])
    assert rc == 2 and "label" in capsys.readouterr().err


@pytest.mark.fault("more GPUs than the cluster has (2 ways); workers that leave Ray Data no CPU", inputs=3,
                   outcome="UserError naming the counts")
def test_placement_refuses_more_gpus_than_the_cluster_has_and_leaves_cpus_to_ray_data():
    with pytest.raises(UserError, match="needs 4 GPUs; the cluster has 2"):
        plan_placement(load_config("smoke", ["run.num_workers=4", "run.use_gpu=true"]), {"CPU": 8, "GPU": 2})
    with pytest.raises(UserError, match="needs 1 GPUs; the cluster has 0"):
        plan_placement(load_config("smoke", ["run.use_gpu=true"]), {"CPU": 2})
    cpu = plan_placement(load_config("smoke", ["run.num_workers=2"]), {"CPU": 2})
    assert not cpu.use_gpu and cpu.cpus_per_worker * 2 <= 1.0  # half the CPUs stay with Ray Data
    assert plan_placement(load_config("smoke"), {"CPU": 16, "GPU": 1}).use_gpu  # auto-detected
    with pytest.raises(UserError, match="leaves no CPU for Ray Data"):
        plan_placement(load_config("smoke", ["run.cpus_per_worker=1", "run.num_workers=2"]), {"CPU": 2})


@pytest.mark.fault("--resume-from a path with no checkpoint", inputs=1,
                   outcome="exit 2, one line naming --resume-from")
def test_resume_from_a_path_that_is_no_checkpoint_exits_2_naming_the_option(shapes_dataset, tmp_path, capsys):
    rc = main(["train", "--recipe", "smoke", "--data", str(shapes_dataset), "--workdir", str(tmp_path / "w"), "--recipe", "smoke",
               "--resume-from", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"--resume-from {tmp_path / 'nowhere'}: not a readable checkpoint" in err[0], err


def _one_error_line(capsys) -> str:
    """The command's stderr is one line (MLflow's own log lines aside) and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.strip().splitlines() if " INFO mlflow" not in line and " WARNING mlflow" not in line]
    assert len(lines) == 1, lines
    return lines[0]


class _Refusing:
    """A real HTTP server on loopback that answers 403 to everything, as a store behind an
    authenticating proxy does to a user without access."""

    def __enter__(self):
        import http.server
        import threading

        class Deny(http.server.BaseHTTPRequestHandler):
            def deny(self):
                self.send_response(403)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"Permission denied")

            do_GET = do_POST = do_PATCH = do_DELETE = deny

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Deny)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_port}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.fault("a tracking store at start that is down, not a store URI, a file where a folder "
                   "is needed, refusing (403)", inputs=4,
                   outcome="exit 2, one line naming what to fix, no traceback; no checkpoint written")
@pytest.mark.parametrize("store, needle", [
    ("down", "did not answer"),
    ("foo://nowhere", "is not a store MLflow can open"),
    ("file-as-folder", "could not open the store"),
    ("refusing", "refused access"),
])
def test_a_tracking_store_that_cannot_be_used_at_start_is_one_line(ray_local, shapes_dataset, tmp_path, capsys,
                                                                   monkeypatch, store, needle):
    from tests.support import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    (tmp_path / "a-file").write_text("")
    uris = {"down": f"http://127.0.0.1:{free_port()}", "file-as-folder": f"sqlite:///{tmp_path / 'a-file' / 'm.db'}"}
    with _Refusing() as refusing:
        uri = refusing if store == "refusing" else uris.get(store, store)
        rc = main(["train", "--recipe", "smoke", "--data", str(shapes_dataset), "--workdir", str(tmp_path / "w"), "--tracking-uri", uri,
                   "--set", "optim.batch_size=16"])
    line = _one_error_line(capsys)
    assert rc == 2 and line.startswith("alexnet train: error: ") and needle in line, line
    assert not list((tmp_path / "w" / "runs").glob("*/checkpoint_*"))  # stopped before training


@pytest.mark.fault("run.register_as with a `/`", inputs=1,
                   outcome="exit 2, one line, before the MLflow store is created")
def test_a_model_name_mlflow_would_refuse_after_training_is_refused_before(ray_local, shapes_dataset, tmp_path,
                                                                            capsys):
    rc = main(["train", "--recipe", "smoke", "--data", str(shapes_dataset), "--workdir", str(tmp_path / "w"),
               "--set", "run.register_as=team/alexnet"])
    line = _one_error_line(capsys)
    assert rc == 2 and "run.register_as='team/alexnet': MLflow model names cannot contain" in line
    assert not (tmp_path / "w" / "mlflow.db").exists()


@pytest.mark.slow
@pytest.mark.fault("`promote` and `predict` against a tracking server that does not answer", inputs=2,
                   outcome="exit 2, one line each saying the store did not answer")
def test_registry_commands_with_a_store_that_does_not_answer_are_one_line(tmp_path):
    """With MLflow's own retry settings (a minutes-long backoff) left as a user has them: the CLI
    caps them itself, so each command gives up in seconds. The 120 s limit guards against a hang."""
    from tests.support import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST_")}
    uri = f"http://127.0.0.1:{free_port()}"
    for args in (["promote", "1"], ["predict", "--data", str(tmp_path), "--out", str(tmp_path / "o")]):
        done = subprocess.run([sys.executable, "-m", "jobs.cli", *args, "--tracking-uri", uri], env=env,
                              capture_output=True, text=True, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and "did not answer" in lines[0], done.stderr[-2000:]
    assert "--model models:/alexnet@champion: MLflow at" in lines[0]


@pytest.mark.fault("a run that diverges (lr 1e38)", inputs=1,
                   outcome="exit 2, last line names the divergence and `lower optim.lr`; no traceback")
@pytest.mark.slow
def test_a_diverged_run_is_one_line_naming_what_to_change(ray_local, shapes_dataset, tmp_path, capsys):
    rc = main(["train", "--recipe", "smoke", "--data", str(shapes_dataset), "--workdir", str(tmp_path / "w"), "--set", "optim.lr=1e38",
               "--set", "optim.batch_size=16", "--set", "optim.epochs=1"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("alexnet train: error: training diverged: the training loss became NaN or inf"), err[-3000:]
    assert "lower optim.lr" in last and "Traceback" not in err


@pytest.mark.fault("`evaluate --log-to` a run id that does not exist", inputs=1,
                   outcome="exit 2, one line, before evaluating")
def test_evaluate_logging_to_a_run_that_does_not_exist_is_refused_before_evaluating(shapes_dataset, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()  # an existing, empty store
    capsys.readouterr()
    assert main(["evaluate", "--data", str(shapes_dataset), "--log-to", "0123abc", "--workdir", str(tmp_path)]) == 2
    assert "--log-to 0123abc: no such MLflow run" in _one_error_line(capsys)
