"""A trained model is never lost to the tracking store: a real `mlflow server` is stopped at each
step after training; the model waits on disk and `alexnet register` finishes the job later."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from alexnet.track import publish as pub
from alexnet.track import tracking
from alexnet.serve.model_files import ModelSpec, build
from alexnet.track.models import load_model
from alexnet.track.registry import CHAMPION, Evaluation
from jobs.cli import main
from tests.support.mlflow_server import MlflowServer

SPEC = ModelSpec("torchvision", 16, ("circle", "square", "triangle"), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 64, 72)
# In run order: the steps of `publish` after which the server may die.
STEPS = ("_new_logged_model", "_upload", "ensure_version", "assign_alias")


def client(uri: str) -> MlflowClient:
    return MlflowClient(uri, registry_uri=uri)


@pytest.fixture
def fast_retries(monkeypatch):
    """An outage is found out in seconds, not the minute a real run rides out."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # a stopped server refuses at once
    monkeypatch.setattr(tracking, "RETRY_WAITS_S", (0.5,))


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    s = MlflowServer(tmp_path_factory.mktemp("server")).start()
    yield s
    s.stop()


@pytest.fixture
def server(shared_server):
    """The module's server, running (each test stops and restarts it; one start-up takes seconds)."""
    if shared_server.proc is None:
        shared_server.start()
    return shared_server


def staged(tmp_path, uri: str, name: str, *, seed: int = 0):
    """A run on the store and a model staged for it, as `alexnet train` leaves them after training."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    run_id = c.create_run(exp.experiment_id if exp else c.create_experiment(name)).info.run_id
    torch.manual_seed(seed)
    model = build(SPEC)
    folder = pub.stage(model, tmp_path / "models", name="run", run_id=run_id, register_as=name,
                       evaluation=Evaluation("v1", False, 0.5, 0.9, 30), dataset_path=str(tmp_path / "no-dataset"),
                       tracking_uri=uri, step=1)
    return run_id, model, folder


def stop_before(monkeypatch, step: str, server: MlflowServer) -> None:
    """The server dies right before `step` (the first time it is called)."""
    real = getattr(pub, step)
    calls = []

    def wrapped(*args, **kwargs):
        if not calls:
            server.stop()
        calls.append(step)
        return real(*args, **kwargs)

    monkeypatch.setattr(pub, step, wrapped)


def logits(model, seed: int = 1) -> np.ndarray:
    images = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8))
    with torch.no_grad():
        return model(images).numpy()


@pytest.mark.fault("the tracking server dies before each publish step: logged model, upload, "
                   "version, alias", inputs=4,
                   outcome="one line naming `alexnet register FOLDER`; the model complete on disk; register "
                           "finishes with one version, champion, same outputs, run FINISHED")
@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
def test_outage_at_each_publish_step_keeps_the_model_and_register_finishes(step, server, tmp_path, monkeypatch,
                                                                          capsys, fast_retries):
    name = f"alexnet-{step.strip('_')}"
    run_id, model, folder = staged(tmp_path, server.uri, name)
    stop_before(monkeypatch, step, server)
    with pytest.raises(pub.NotPublished) as raised:
        pub.publish(folder, server.uri)
    message = str(raised.value)
    assert "\n" not in message and "did not answer" in message and f"alexnet register {folder}" in message
    noted = json.loads((folder / pub.REGISTRATION_FILE).read_text())
    done = STEPS.index(step)  # the steps that landed before the outage are recorded as done
    assert bool(noted["model_id"]) == (done >= 1) and bool(noted["model_uri"]) == (done >= 2)
    assert bool(noted["version"]) == (done >= 3) and noted["alias"] is None
    assert load_model(str(folder)).classes == list(SPEC.classes)  # complete on disk

    server.start()  # same port, same store
    capsys.readouterr()
    assert main(["register", str(folder), "--tracking-uri", server.uri]) == 0
    assert f"models:/{name}/1: champion (no champion yet)" in capsys.readouterr().out
    assert not folder.exists()
    c = client(server.uri)
    versions = c.search_model_versions(f"name='{name}'")
    assert [v.version for v in versions] == ["1"] and versions[0].run_id == run_id  # no duplicate from a retry
    experiment = c.get_run(run_id).info.experiment_id
    logged = [m for m in c.search_logged_models([experiment]) if m.source_run_id == run_id]
    assert len(logged) == 1 and logged[0].status.value == "READY"
    assert str(c.get_model_version_by_alias(name, CHAMPION).version) == "1"
    assert c.get_run(run_id).info.status == "FINISHED"
    np.testing.assert_allclose(logits(load_model(f"models:/{name}@champion", server.uri)), logits(model), rtol=1e-6)


@pytest.mark.fault("the server down a few seconds as the alias is decided", inputs=1,
                   outcome="published as champion after a retry; no copy left")
@pytest.mark.slow
def test_an_outage_shorter_than_the_retries_is_ridden_out(server, tmp_path, monkeypatch, capsys):
    """The server dies as the alias is decided and is back a few seconds later: no error, no copy left."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(tracking, "RETRY_WAITS_S", (10.0, 20.0, 40.0))
    _, _, folder = staged(tmp_path, server.uri, "alexnet-ridden-out")
    real = pub.assign_alias
    restarted = []

    def outage_then_decide(*args, **kwargs):
        if not restarted:
            server.stop()
            restarted.append(threading.Thread(target=server.start))
            restarted[0].start()  # back after its start-up time, within the first wait
        return real(*args, **kwargs)

    monkeypatch.setattr(pub, "assign_alias", outage_then_decide)
    published = pub.publish(folder, server.uri)
    restarted[0].join()
    assert published.version == "1" and published.alias == CHAMPION and not folder.exists()
    assert "retrying in 10 s" in capsys.readouterr().err


@pytest.mark.fault("`alexnet register` of a folder with no registration.json", inputs=1,
                   outcome="exit 2, one line")
def test_register_refuses_a_folder_that_is_not_a_waiting_model(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["register", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no registration.json" in err[0]


@pytest.mark.fault("a second model staged under a waiting one's name; a tracking URI with a password", inputs=2,
                   outcome="both kept (r, r-2), no temporary folder; no password on disk or in the printed "
                           "command")
def test_staging_is_atomic_and_never_overwrites_a_waiting_model(tmp_path):
    first = pub.stage(build(SPEC), tmp_path, name="r", run_id="a", register_as="alexnet",
                      evaluation=Evaluation("v1", False, 0.5), dataset_path="/d", tracking_uri="http://u:p@h:1", step=0)
    second = pub.stage(build(SPEC), tmp_path, name="r", run_id="b", register_as="alexnet",
                       evaluation=Evaluation("v1", False, 0.5), dataset_path="/d", tracking_uri="sqlite:////w/m.db", step=0)
    assert (first.name, second.name) == ("r", "r-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "r-2"]  # no temporary folder left
    assert json.loads((first / pub.REGISTRATION_FILE).read_text())["tracking_uri"] == "http://***@h:1"  # no password on disk
    assert pub.register_command(first, "http://u:p@h:1") == f"alexnet register {first} --tracking-uri URI"
    assert pub.register_command(second, "sqlite:////w/m.db") == f"alexnet register {second}"


@pytest.mark.fault("the tracking server gone right after `alexnet train`'s fit", inputs=1,
                   outcome="exit 2, one line naming the folder and `alexnet register`; run not FAILED; "
                           "register gives it its model, report and artifacts; nothing lost")
@pytest.mark.slow
def test_train_with_the_server_gone_right_after_fit_keeps_the_model_for_register(ray_local, shapes_dataset, server,
                                                                                tmp_path, monkeypatch, capsys,
                                                                                fast_retries):
    """Through `alexnet train`: the store dies as training ends. One line names the folder and the
    command; the run is not FAILED; `alexnet register` gives the run its model and its report, and
    the run page shows its input and its code."""
    import alexnet.run as run_module
    from alexnet.train import checkpoint
    from alexnet.serve.model_files import from_training_state
    from pipelines.dataset import open_dataset
    from tests.support.mlflow_server import train_args, train_cli

    commit = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("ALEXNET_GIT_COMMIT", commit)  # as `alexnet submit` passes it to a job
    real_fit = run_module.fit

    def fit_then_outage(*args, **kwargs):
        outcome = real_fit(*args, **kwargs)
        server.stop()
        return outcome

    monkeypatch.setattr(run_module, "fit", fit_then_outage)
    work = tmp_path / "work"
    capsys.readouterr()
    rc = train_cli(train_args(shapes_dataset, work, "outage-run", "--tracking-uri", server.uri,
                              "--set", "optim.epochs=1", "--set", "run.register_as=outage"))
    err = capsys.readouterr().err.strip().splitlines()
    folder = work / "models" / "outage-run"
    assert rc == 2 and err[-1].startswith("alexnet train: error: training finished"), err[-5:]
    assert f"`alexnet register {folder}`" in err[-1] and "did not answer" in err[-1]
    assert (folder / pub.REGISTRATION_FILE).is_file()
    assert (folder / pub.REPORT_DIR / "eval" / "confusion_matrix.png").is_file()  # the report waits with the model

    server.start()
    c = client(server.uri)
    run = c.search_runs([c.get_experiment_by_name("alexnet").experiment_id],
                        filter_string="attributes.run_name = 'outage-run'")[0]
    assert run.info.status == "RUNNING"  # not FAILED: training succeeded; the store could not be told
    assert main(["register", str(folder), "--tracking-uri", server.uri]) == 0
    run = c.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and not folder.exists()
    from tests.support.mlflow_server import RUN_ARTIFACTS, artifacts

    assert set(RUN_ARTIFACTS) | {"eval/val_scores.json"} <= artifacts(c, run.info.run_id)  # nothing lost
    assert str(c.get_model_version_by_alias("outage", CHAMPION).version) == "1"
    info = open_dataset(shapes_dataset)
    # The run page answers "trained on what, by which code".
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert (dataset.name, dataset.digest, json.loads(dataset.source)["uri"]) == ("shapes", info.version, str(shapes_dataset))
    assert [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]][:3] == ["id", "image", "label"]
    assert json.loads(dataset.profile)["splits"] == {"train": info.split_size("train"), "val": info.split_size("val")}
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    assert run.data.tags["mlflow.source.git.commit"] == commit
    assert run.data.tags["mlflow.source.name"] == "alexnet train" and run.data.tags["mlflow.source.type"] == "LOCAL"
    # The registered weights are the best checkpoint's.
    best = checkpoint.find_latest(str(work / "runs"), "outage-run")[0]
    expected = from_training_state(checkpoint.load(best), info)
    np.testing.assert_allclose(logits(load_model("models:/outage@champion", server.uri)), logits(expected), rtol=1e-5)
