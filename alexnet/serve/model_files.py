"""The model as it is served: uint8 NCHW images in, logits out (normalisation built in).

A served model is two plain files, so loading one never runs code that came with it:
- `alexnet.json`: what rebuilds it (architecture, hidden units, classes, the dataset's mean/std,
  the val crop and the shorter side it is cut from);
- `weights.pt`: the network's state_dict, read with `torch.load(weights_only=True)`, which
  admits tensors and plain containers only (a pickled object is refused, not run).

In MLflow the two files sit in the model's `data/` folder, next to an `MLmodel` whose
`python_function` flavor names alexnet.serve.pyfunc_loader, copied into the model's `code/` with a
snapshot of this project's `alexnet/` and `pipelines/` sources: `mlflow.pyfunc.load_model(URI)`
works in a clean environment holding only the model's requirements.txt. That code runs only
under MLflow's pyfunc loader; this project's own loaders (`load`, behind predict, evaluate and the
champion re-score) read the two files and import nothing from the artifact.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import shutil
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet.config import from_dict
from alexnet.models import ARCHITECTURES, build_model
from pipelines.atomic import write_atomic_dir
from pipelines.errors import UserError, first_line

SPEC_FILE = "alexnet.json"
WEIGHTS_FILE = "weights.pt"
DATA_DIR = "data"  # inside an MLflow model: where the two files are
FLAVOR = "alexnet"  # the MLmodel flavor name
FORMAT = 1  # version of alexnet.json's layout
CODE_DIR = "code"  # inside an MLflow model: what MLflow puts on sys.path before importing the loader
LOADER_MODULE = "alexnet_pyfunc_loader"  # alexnet/serve/pyfunc_loader.py under a name no package uses


class ModelFileError(UserError):
    """A model folder or artifact that is not a model this project wrote (or is damaged)."""


@dataclass(frozen=True)
class ModelSpec:
    arch: str  # a name in alexnet.ARCHITECTURES
    hidden: int  # units of the two hidden fully connected layers
    classes: tuple[str, ...]  # output index -> class name
    mean: tuple[float, float, float]  # per RGB channel, 0-1 scale
    std: tuple[float, float, float]
    crop: int  # px, side of the square input (val: centre crop)
    resize: int  # px, shorter side the val crop is cut from

    def to_json(self) -> dict:
        return {"format": FORMAT, **asdict(self), "input": "uint8 NCHW RGB: the centre crop of the image resized "
                                                            "to `resize` px on its shorter side"}


class Classifier(nn.Module):
    def __init__(self, net: nn.Module, spec: ModelSpec):
        super().__init__()
        self.net = net
        self.spec = spec
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def crop(self) -> int:
        return self.spec.crop

    @property
    def resize(self) -> int:
        return self.spec.resize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        return self.net((x - self.mean) / self.std)


def build(spec: ModelSpec, weights: dict | None = None) -> Classifier:
    """The servable model of `spec` on CPU in eval mode, with `weights` (the network's state_dict) if given."""
    net = build_model(spec.arch, len(spec.classes), hidden=spec.hidden)
    if weights is not None:
        net.load_state_dict(weights)
    return Classifier(net, spec).eval()


def from_training_state(state: dict, info) -> Classifier:
    """A training checkpoint's state (alexnet.train.checkpoint.load) -> the servable model on CPU,
    in eval mode: the network with `info`'s (the dataset's) normalisation and classes, and the
    run's val crop and resize."""
    cfg = from_dict(state["config"])
    spec = ModelSpec(arch=cfg.model.arch, hidden=cfg.model.hidden, classes=tuple(info.classes),
                     mean=tuple(info.pixel_mean), std=tuple(info.pixel_std), crop=cfg.data.crop, resize=cfg.data.resize)
    return build(spec, state["model"])


def save(classifier: Classifier, directory: str | os.PathLike) -> Path:
    """Write the two files into `directory` (created if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPEC_FILE).write_text(json.dumps(classifier.spec.to_json(), indent=2))
    torch.save({k: v.detach().cpu() for k, v in classifier.net.state_dict().items()}, directory / WEIGHTS_FILE)
    return directory


def load(directory: str | os.PathLike, *, source: str | None = None) -> Classifier:
    """The model in `directory` (the two files, or an MLflow model folder holding them in data/),
    without running any code from it. `source` names it in errors (default: the folder)."""
    directory = Path(directory)
    if (directory / DATA_DIR / SPEC_FILE).is_file():
        directory = directory / DATA_DIR
    source = source or str(directory)
    spec = read_spec(directory, source)
    try:
        weights = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"{source}: no {WEIGHTS_FILE} next to {SPEC_FILE}") from None
    except pickle.UnpicklingError:
        raise ModelFileError(f"{source}: {WEIGHTS_FILE} holds more than tensors (a pickled object); refused "
                             f"without loading it, as loading it could run code") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise ModelFileError(f"{source}: {WEIGHTS_FILE} is not a readable weights file ({first_line(err)})") from None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ModelFileError(f"{source}: {WEIGHTS_FILE} is not a state_dict (a mapping of names to tensors)")
    misfit = _misfit(spec, weights)
    if misfit:
        raise ModelFileError(f"{source}: {WEIGHTS_FILE} does not fit {SPEC_FILE} ({misfit})")
    try:
        return build(spec, weights)
    except RuntimeError as err:  # missing/unexpected keys, wrong shapes
        raise ModelFileError(f"{source}: {WEIGHTS_FILE} does not fit {SPEC_FILE} ({first_line(err)})") from None


def _misfit(spec: ModelSpec, weights: dict) -> str:
    """What differs between the network `spec` describes and the tensors in `weights`, found on
    PyTorch's meta device: nothing is allocated for a spec (a crafted `hidden` or class list) that
    claims more than the weights file holds."""
    with torch.device("meta"):
        wanted = {k: tuple(v.shape) for k, v in build_model(spec.arch, len(spec.classes), hidden=spec.hidden)
                  .state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    for key in sorted(wanted.keys() | got.keys()):
        if wanted.get(key) != got.get(key):
            return f"{key}: {SPEC_FILE} needs {wanted.get(key, 'nothing')}, the weights hold {got.get(key, 'nothing')}"
    return ""


def read_spec(directory: str | os.PathLike, source: str | None = None) -> ModelSpec:
    """`alexnet.json`, every field checked: a model from elsewhere is input like any other."""
    path = Path(directory) / SPEC_FILE
    source = source or str(directory)
    if not path.is_file():
        raise ModelFileError(f"{source}: no {SPEC_FILE}; not a model saved by this project's `alexnet train` "
                             f"(models logged by older versions were pickles and are not loaded: retrain or re-export)")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{source}: {SPEC_FILE} is not valid JSON ({err})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ModelFileError(f"{source}: {SPEC_FILE} has format {raw.get('format') if isinstance(raw, dict) else None!r}; "
                             f"this version reads format {FORMAT}")

    def field(name, ok, expected):
        value = raw.get(name)
        if not ok(value):
            raise ModelFileError(f"{source}: {SPEC_FILE} field {name!r} is {value!r}; expected {expected}")
        return value

    def is_int(v, low):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    def triple(v, positive):
        return (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                           and math.isfinite(x) and (x > 0 or not positive) for x in v))

    classes = field("classes", lambda v: isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str) for c in v),
                    "a list of at least 2 class names")
    return ModelSpec(
        arch=field("arch", lambda v: v in ARCHITECTURES, f"one of {', '.join(ARCHITECTURES)}"),
        hidden=field("hidden", lambda v: is_int(v, 1), "a positive integer"),
        classes=tuple(classes),
        mean=tuple(field("mean", lambda v: triple(v, False), "3 finite numbers")),
        std=tuple(field("std", lambda v: triple(v, True), "3 positive numbers")),
        crop=field("crop", lambda v: is_int(v, 1), "a positive integer (px)"),
        resize=field("resize", lambda v: is_int(v, 1), "a positive integer (px)"),
    )


# MLflow's two hooks: `save_model` is the flavor `mlflow.models.Model.log` calls to lay out the
# model folder; `_load_pyfunc` is what `mlflow.pyfunc.load_model` calls (the MLmodel names this module).

def save_model(path: str, mlflow_model, *, package: str, **_) -> None:
    """Model.log's flavor hook: the MLflow model folder at `path` from a folder `save` wrote."""
    import mlflow  # deferred, as in every hook here: slow to import, and only MLflow's hooks need it
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    spec = read_spec(package)
    data = Path(path) / DATA_DIR
    data.mkdir(parents=True)
    for name in (SPEC_FILE, WEIGHTS_FILE):
        shutil.copyfile(Path(package) / name, data / name)
    # torchvision's version from its metadata: importing torchvision only for it is slow.
    mlflow_model.signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 3, spec.crop, spec.crop))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(spec.classes)))]))
    # What the loader's code (copied below) imports; the project itself travels in code/.
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
                    f"mlflow=={mlflow.__version__}", f"pyyaml=={version('pyyaml')}", f"pyarrow=={version('pyarrow')}"]
    (Path(path) / "requirements.txt").write_text("\n".join(requirements) + "\n")
    _copy_loader_code(Path(path) / CODE_DIR)
    (Path(path) / "python_env.yaml").write_text(
        f"python: {platform.python_version()}\nbuild_dependencies:\n- pip\ndependencies:\n- -r requirements.txt\n")
    mlflow_model.add_flavor(FLAVOR, data=DATA_DIR, spec=SPEC_FILE, weights=WEIGHTS_FILE, format=FORMAT,
                            weights_format="torch state_dict, load with weights_only=True")
    mlflow.pyfunc.add_to_model(mlflow_model, loader_module=LOADER_MODULE, data=DATA_DIR, code=CODE_DIR,
                               python_env="python_env.yaml")
    mlflow_model.save(str(Path(path) / "MLmodel"))


def _copy_loader_code(code: Path) -> None:
    """code/alexnet_pyfunc_loader.py, and code/project/{alexnet,pipelines}/: the sources (and
    shipped recipes) of the two packages the loader imports."""
    root = Path(__file__).resolve().parents[2]
    code.mkdir(parents=True)
    shutil.copyfile(Path(__file__).with_name("pyfunc_loader.py"), code / f"{LOADER_MODULE}.py")
    for package in ("alexnet", "pipelines"):
        shutil.copytree(root / package, code / "project" / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


class PyfuncModel:
    """`mlflow.pyfunc.load_model(URI).predict(uint8 NCHW array)` -> float32 logits (N, classes)."""

    def __init__(self, classifier: Classifier):
        self.classifier = classifier

    def predict(self, model_input, params=None):
        with torch.inference_mode():
            return self.classifier(torch.as_tensor(np.asarray(model_input))).numpy()

    def get_raw_model(self) -> Classifier:
        return self.classifier


def _load_pyfunc(data_path: str) -> PyfuncModel:
    return PyfuncModel(load(data_path))


def write_atomically(classifier: Classifier, directory: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
    """`save` into a folder that appears whole or not at all (pipelines.atomic). `extra` adds small
    text files (name -> content) beside the two model files."""
    def fill(tmp: str) -> None:
        save(classifier, tmp)
        for name, text in (extra or {}).items():
            (Path(tmp) / name).write_text(text)

    write_atomic_dir(directory, fill)
    return Path(directory)