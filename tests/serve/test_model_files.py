"""Loading a model never runs code that came with it: a registered version whose artifact carries
a malicious pickle is refused with one line on every path the project loads a model, and the
pickle's payload (creating a marker file) never runs."""

from __future__ import annotations

import contextlib
import pathlib
import types

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from alexnet.track import publish as pub
from alexnet.serve.model_files import WEIGHTS_FILE, ModelFileError, ModelSpec, build
from alexnet.track.models import load_model
from alexnet.track.registry import CHALLENGER, Evaluation
from alexnet.run import rescorer
from alexnet.track.tracking import using_store
from jobs.cli import main

SPEC = ModelSpec("torchvision", 16, ("circle", "square"), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 64, 72)


class Payload:
    """Unpickling this creates `marker`: what an attacker's pickle would do with the driver's credentials."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


class PayloadModule(torch.nn.Module):
    """An nn.Module whose pickle (mlflow.pytorch's format before this project's own) is the payload."""

    def __init__(self, marker: pathlib.Path):
        super().__init__()
        self.marker = marker

    def __reduce_ex__(self, protocol):
        return pathlib.Path.touch, (self.marker,)


def errors(capsys) -> list[str]:
    """stderr less MLflow's own log lines (a new SQLite store announces its tables)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.strip().splitlines() if " INFO mlflow" not in line and " WARNING mlflow" not in line]


def store(tmp_path) -> tuple[str, MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri, registry_uri=uri)
    run_id = c.create_run(c.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())).info.run_id
    return uri, c, run_id


def register(tmp_path, uri: str, run_id: str, *, name: str, tamper=None, dataset_version: str = "v1") -> str:
    """Stage, optionally tamper with the staged files, then log + register + alias like a training run."""
    folder = pub.stage(build(SPEC), tmp_path / "models", name=name, run_id=run_id, register_as="alexnet",
                       evaluation=Evaluation(dataset_version, False, 0.5), dataset_path="/none", tracking_uri=uri,
                       step=0)
    if tamper:
        tamper(folder)
    return pub.publish(folder, uri).version


@pytest.mark.fault("a model version whose weights.pt carries a code-running pickle: predict, "
                   "champion re-score, mlflow.pyfunc", inputs=3,
                   outcome="refused on every path (predict: exit 2, one line); the new version waits as challenger; "
                           "the payload never ran")
def test_a_version_whose_weights_are_a_pickle_payload_is_refused_everywhere(tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = tmp_path / "payload.pt"
    torch.save({"net.weight": Payload(marker)}, payload)
    torch.load(payload, weights_only=False)  # the payload is live: a plain torch.load runs it
    assert marker.exists()
    marker.unlink()

    uri, c, run_id = store(tmp_path)
    bad = register(tmp_path, uri, run_id, name="bad", tamper=lambda folder: payload.replace(folder / WEIGHTS_FILE))
    assert str(c.get_model_version_by_alias("alexnet", "champion").version) == bad

    capsys.readouterr()
    # alexnet predict (and evaluate, which loads the same way): one line, exit 2
    assert main(["predict", "--model", "models:/alexnet@champion", "--data", str(tmp_path), "--out",
                 str(tmp_path / "out"), "--tracking-uri", uri]) == 2
    err = errors(capsys)
    assert len(err) == 1 and "--model models:/alexnet@champion" in err[0] and "weights.pt holds more than tensors" in err[0]
    # the champion re-score of the next training run: the payload's champion cannot be compared, the new one waits
    rescore = rescorer(uri, "alexnet", types.SimpleNamespace(classes=list(SPEC.classes)), ten_crop=False)
    top1, why = rescore(bad)
    assert top1 is None and f"champion alexnet v{bad}" in why and "refused" in why
    folder = pub.stage(build(SPEC), tmp_path / "models", name="next", run_id=run_id, register_as="alexnet",
                       evaluation=Evaluation("v2", False, 0.4), dataset_path="/none", tracking_uri=uri, step=0)
    published = pub.publish(folder, uri, rescore=rescore)
    assert published.alias == CHALLENGER and "could not be re-scored" in published.decision
    # an MLflow user's mlflow.pyfunc.load_model goes through the same loader
    import mlflow

    with using_store(uri), pytest.raises(ModelFileError, match="holds more than tensors"):
        mlflow.pyfunc.load_model(f"models:/alexnet/{bad}")
    assert not marker.exists()


@pytest.mark.fault("a champion logged as an mlflow.pytorch pickle: predict and the re-score", inputs=2,
                   outcome="refused unread (no alexnet.json); the payload never ran")
def test_a_pickled_model_of_mlflow_pytorch_is_refused_unread(tmp_path, capsys):
    """A version logged with mlflow.pytorch's pickle format (this project's before): never unpickled."""
    import mlflow

    marker = tmp_path / "pwned"
    uri, c, run_id = store(tmp_path)
    with using_store(uri), mlflow.start_run(run_id=run_id):  # the run's experiment keeps its files in tmp_path
        logged = mlflow.pytorch.log_model(PayloadModule(marker), name="model", registered_model_name="alexnet",
                                          serialization_format="pickle", pip_requirements=["torch"])
    with using_store(uri):
        c.set_registered_model_alias("alexnet", "champion", logged.registered_model_version)
        marker.unlink(missing_ok=True)
        with contextlib.suppress(Exception):  # the payload is live: MLflow's loader runs it (then fails on its None)
            mlflow.pytorch.load_model("models:/alexnet@champion")
    assert marker.exists()
    marker.unlink()

    capsys.readouterr()
    assert main(["predict", "--model", "models:/alexnet@champion", "--data", str(tmp_path), "--out",
                 str(tmp_path / "out"), "--tracking-uri", uri]) == 2
    err = errors(capsys)
    assert len(err) == 1 and "no alexnet.json; not a model saved by this project" in err[0], err
    top1, why = rescorer(uri, "alexnet", types.SimpleNamespace(classes=list(SPEC.classes)), ten_crop=False)("1")
    assert top1 is None and "no alexnet.json" in why
    assert not marker.exists()


@pytest.mark.fault("bad alexnet.json fields (arch, std, classes, crop, format) and weights that do "
                   "not fit", inputs=6,
                   outcome="ModelFileError naming each")
def test_model_files_are_checked_field_by_field(tmp_path):
    import json

    folder = tmp_path / "m"
    from alexnet.serve.model_files import SPEC_FILE, save

    save(build(SPEC), folder)
    good = json.loads((folder / SPEC_FILE).read_text())
    for field, value, needle in [("arch", "resnet", "expected one of"), ("std", [1, 0, 1], "3 positive numbers"),
                                 ("classes", ["one"], "at least 2"), ("crop", True, "positive integer"),
                                 ("format", 99, "reads format 1")]:
        (folder / SPEC_FILE).write_text(json.dumps({**good, field: value}))
        with pytest.raises(ModelFileError, match=needle):
            load_model(str(folder))
    (folder / SPEC_FILE).write_text(json.dumps(good))
    torch.save({"net.features.0.weight": torch.zeros(1)}, folder / WEIGHTS_FILE)
    with pytest.raises(ModelFileError, match="does not fit"):
        load_model(str(folder))
    assert isinstance(np.asarray(1), np.ndarray)


@pytest.mark.fault("an alexnet.json claiming 2^20 hidden units, or a million classes, beside small weights", inputs=2,
                   outcome="ModelFileError naming the layer that does not fit; the network is never built "
                           "(terabytes at that size)")
def test_a_spec_claiming_a_huge_network_is_refused_before_anything_is_allocated(tmp_path):
    import json

    from alexnet.serve.model_files import SPEC_FILE, save

    folder = tmp_path / "m"
    save(build(SPEC), folder)
    good = json.loads((folder / SPEC_FILE).read_text())
    for field, value in [("hidden", 1 << 20), ("classes", [f"c{i}" for i in range(1_000_000)])]:
        (folder / SPEC_FILE).write_text(json.dumps({**good, field: value}))
        with pytest.raises(ModelFileError, match=r"does not fit alexnet.json \(.*needs .*the weights hold"):
            load_model(str(folder))


@pytest.mark.fault("loading `models:/alexnet@champion` with no tracking store named, outside the work folder",
                   inputs=1, outcome="one line naming where `alexnet train` keeps its store; no ./mlflow.db created")
def test_loading_a_registered_model_with_no_store_named_says_where_to_look(tmp_path, monkeypatch):
    from pipelines.errors import UserError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UserError, match=r"models:/alexnet@champion: no tracking store named .*alexnet-work/mlflow.db"):
        load_model("models:/alexnet@champion")
    assert list(tmp_path.iterdir()) == []


# Run with `python -I -S`: no site, so no .pth file installs this project's editable finder; the
# virtualenv's site-packages is then appended by hand, so the script sees only the installed
# distributions (torch, mlflow, ...), as a clean environment built from the model's
# requirements.txt would. The working folder is elsewhere, so the checkout is not on the path.
_CLEAN_LOAD = """
import sys
sys.path.append(sys.argv[2])
try:
    import alexnet
    raise SystemExit("the project is importable here: the test would prove nothing")
except ImportError:
    pass
sys.modules.pop("alexnet", None)
import json, numpy as np, mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
import alexnet
print(json.dumps({"shape": list(model.predict(np.zeros((2, 3, 64, 64), dtype=np.uint8)).shape),
                  "alexnet_from": alexnet.__file__}))
"""


def test_a_registered_model_loads_and_predicts_where_the_project_is_not_installed(tmp_path):
    """What `mlflow models serve` or a user's own service does elsewhere: the model's own files are
    enough. Its requirements.txt names what its loader imports, and nothing of this project."""
    import json
    import subprocess
    import sys
    import sysconfig

    import mlflow

    uri, _, run_id = store(tmp_path)
    version = register(tmp_path, uri, run_id, name="m")
    with using_store(uri):
        local = pathlib.Path(mlflow.artifacts.download_artifacts(f"models:/alexnet/{version}", dst_path=str(tmp_path / "dl")))
    requirements = (local / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in requirements} == {"torch", "numpy", "mlflow", "pyyaml", "pyarrow"}
    clean = tmp_path / "elsewhere"
    clean.mkdir()
    done = subprocess.run([sys.executable, "-I", "-S", "-c", _CLEAN_LOAD, str(local), sysconfig.get_paths()["purelib"]], cwd=clean,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shape"] == [2, 2]
    assert result["alexnet_from"].startswith(str(local / "code" / "project"))


def test_loading_a_model_with_mlflow_keeps_the_installed_project_in_charge(tmp_path):
    """Where the project is installed, its own loader reads the model, and the model's code folder
    (first on sys.path after MLflow loads it) hides none of the project's packages."""
    import subprocess
    import sys

    uri, _, run_id = store(tmp_path)
    version = register(tmp_path, uri, run_id, name="m")
    script = ("import sys, mlflow\nmlflow.set_tracking_uri(sys.argv[1])\n"
              "m = mlflow.pyfunc.load_model(sys.argv[2])\n"
              "import alexnet, alexnet.track.models, jobs.cli\nprint(alexnet.__file__)")
    done = subprocess.run([sys.executable, "-c", script, uri, f"models:/alexnet/{version}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(pathlib.Path(__file__).resolve().parents[2] / "alexnet" / "__init__.py")
