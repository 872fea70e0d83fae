"""The one typed training config: data / model / optim / run, from a YAML recipe + overrides.

Every field has its default here and nowhere else. `load_config(recipe, ["optim.lr=0.1"])`
rejects unknown keys and bad values with a message that names the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from alexnet.lr_schedule import LR_SCHEDULES
from pipelines.errors import UserError

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass(frozen=True)
class DataSection:
    path: str = ""  # dataset directory written by `alexnet ingest`
    crop: int = 224  # px, side of the square network input
    resize: int = 256  # px, shorter side every image is scaled to before the crop (random in training, centre in val)
    pca_lighting: float = 0.1  # std of the paper's PCA lighting coefficients; 0 disables
    flip: bool = True  # random horizontal flips in training
    random_resized_crop: bool = False  # torchvision's RandomResizedCrop instead of the paper's fixed-scale crop
    ten_crop_eval: bool = False  # val: average the softmax over 10 crops (corners, centre, mirrored), as the paper
    shuffle_buffer: int = 1024  # rows in each worker's local shuffle buffer (on top of file shuffle)
    decode: str = "cpu"  # cpu: Ray Data's CPU workers decode + augment | gpu: train workers do it on their GPU (nvJPEG)
    seed: int = 0  # seeds init, row-group order, shuffle, and each image's augmentation (per seed, epoch, image); batches form in the order Ray's tasks finish, so which images share a step can differ between runs

    @property
    def augmentation(self) -> dict:
        """The training augmentation's settings, as pipelines.read.loader.train_preset takes them."""
        return {"crop": self.crop, "resize": self.resize, "pca_lighting": self.pca_lighting, "flip": self.flip,
                "random_resized_crop": self.random_resized_crop}


@dataclass(frozen=True)
class ModelSection:
    arch: str = "torchvision"  # a name in alexnet.ARCHITECTURES
    dropout: float = 0.5  # probability, in the fully connected layers
    hidden: int = 4096  # units of the two hidden fully connected layers (4096 in every source; fewer for quick CPU runs)


@dataclass(frozen=True)
class OptimSection:
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01  # learning rate per 128 images of global batch (scaled linearly)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4  # L2 coefficient (decoupled for AdamW)
    batch_size: int = 128  # images per step, all workers together
    epochs: int = 90  # full passes over the training split
    schedule: str = "plateau"  # a name in lr_schedule.LR_SCHEDULES: plateau (paper: /10 when val stalls) | step | cosine | constant
    step_size: int = 30  # epochs between x0.1 decays of the step schedule
    warmup_epochs: int = 0  # epochs of warm-up: lr/10 rising linearly, every step, to lr
    label_smoothing: float = 0.0  # probability mass spread over all classes; 0 disables


@dataclass(frozen=True)
class RunSection:
    num_workers: int = 1  # Ray Train workers (one per GPU on GPU clusters)
    use_gpu: str = "auto"  # auto (GPUs if the cluster has any) | true | false
    cpus_per_worker: float = 0.0  # CPUs each train worker reserves; 0 = sized so Ray Data keeps CPUs
    max_failures: int = 0  # worker-group restarts from the last checkpoint before the run fails
    keep_checkpoints: int = 2  # best K by val top-1 are kept (plus the latest)
    amp: bool = True  # bf16 autocast on GPU (no effect on CPU)
    channels_last: bool = True  # NHWC memory format on GPU
    compile: bool = False  # torch.compile the model (GPU; slow to start)
    register_as: str = "alexnet"  # MLflow registered model name; "" skips registration
    system_metrics: bool = False  # log CPU/memory/disk/network (+GPU with nvidia-ml-py) as system/* metrics, per node
    system_metrics_interval: float = 10.0  # seconds between system-metric samples


@dataclass(frozen=True)
class Config:
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "data.decode": ("cpu", "gpu"),
    "optim.optimizer": ("sgd", "adamw"),
    "optim.schedule": tuple(LR_SCHEDULES),
    "run.use_gpu": ("auto", "true", "false"),
}


def _coerce(key: str, value, typ):
    if typ is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes", "on"):
            return True
        if str(value).lower() in ("false", "0", "no", "off"):
            return False
        raise UserError(f"{key}={value!r}: expected true or false")
    if typ in (int, float):
        return _coerce_number(key, value, typ)
    if typ is str:
        return str(value).lower() if key in CHOICES else str(value)
    try:
        return typ(value) if not isinstance(value, typ) else value
    except (TypeError, ValueError):
        raise UserError(f"{key}={value!r}: expected {typ.__name__}") from None


def _coerce_number(key: str, value, typ):
    """A finite int or float: `inf`, `nan`, `1e400` and `true` are errors naming the key, never an
    OverflowError or a run that sleeps forever; 3.0 is an int, 2.5 is not."""
    expected = "an integer" if typ is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"{key}={value!r}: expected {expected}")
    if isinstance(value, int):
        return value if typ is int else _finite(key, value, expected)
    if typ is int and isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass  # "3.0", "1e3": read as a float below
    number = _finite(key, value, expected)
    if typ is int:
        if not number.is_integer():
            raise UserError(f"{key}={value!r}: expected an integer")
        return int(number)
    return number


def _finite(key: str, value, expected: str) -> float:
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise UserError(f"{key}={value!r}: expected {expected}") from None
    if not math.isfinite(number):
        raise UserError(f"{key}={value!r}: expected a finite {expected.split()[-1]}")
    return number


def from_dict(raw: dict, source: str = "config") -> Config:
    """Nested dict -> Config; unknown groups or keys are errors naming the valid ones."""
    groups = {}
    hints = typing.get_type_hints(Config)
    for group, values in (raw or {}).items():
        if group not in hints:
            raise UserError(f"{source}: unknown section {group!r}; valid: {', '.join(hints)}")
        if not isinstance(values, dict):
            raise UserError(f"{source}: section {group!r} must be a mapping")
        cls = hints[group]
        fields = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in fields:
                raise UserError(f"{source}: unknown key {group}.{key}; valid: {', '.join(fields)}")
            kwargs[key] = _coerce(f"{group}.{key}", value, fields[key])
        groups[group] = cls(**kwargs)
    cfg = Config(**groups)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        group, name = key.split(".")
        value = getattr(getattr(cfg, group), name)
        if value not in allowed:
            raise UserError(f"{key}={value!r}: supported values are {', '.join(allowed)}")
    if cfg.run.num_workers < 1:
        raise UserError(f"run.num_workers={cfg.run.num_workers}: needs at least 1 worker")
    checks = [
        (cfg.optim.batch_size >= 1, f"optim.batch_size={cfg.optim.batch_size}: must be positive"),
        (cfg.optim.batch_size % cfg.run.num_workers == 0,
         f"optim.batch_size={cfg.optim.batch_size} is not divisible by run.num_workers={cfg.run.num_workers}"),
        (cfg.optim.epochs >= 1, f"optim.epochs={cfg.optim.epochs}: must be at least 1"),
        (cfg.optim.lr > 0, f"optim.lr={cfg.optim.lr}: must be positive"),
        (cfg.model.hidden >= 1, f"model.hidden={cfg.model.hidden}: must be at least 1 unit"),
        (0 <= cfg.model.dropout < 1, f"model.dropout={cfg.model.dropout}: expected 0 <= p < 1"),
        (cfg.data.crop >= 32, f"data.crop={cfg.data.crop}: expected at least 32 px"),
        (cfg.data.resize >= cfg.data.crop, f"data.resize={cfg.data.resize} is smaller than data.crop={cfg.data.crop}"),
        (cfg.run.cpus_per_worker >= 0, f"run.cpus_per_worker={cfg.run.cpus_per_worker}: must be >= 0"),
        (cfg.run.max_failures >= 0, f"run.max_failures={cfg.run.max_failures}: must be >= 0"),
        (cfg.optim.step_size >= 1, f"optim.step_size={cfg.optim.step_size}: must be at least 1 epoch"),
        (cfg.optim.warmup_epochs >= 0, f"optim.warmup_epochs={cfg.optim.warmup_epochs}: must be >= 0"),
        (0 <= cfg.optim.label_smoothing < 1, f"optim.label_smoothing={cfg.optim.label_smoothing}: expected 0 <= s < 1"),
        (cfg.run.system_metrics_interval >= 0.5,
         f"run.system_metrics_interval={cfg.run.system_metrics_interval}: expected at least 0.5 s"),
        (cfg.run.keep_checkpoints >= 1, f"run.keep_checkpoints={cfg.run.keep_checkpoints}: must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str) -> Path:
    """A shipped recipe name (`smoke`, `paper`) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"recipe {path} does not exist")
        return path
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise UserError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(shipped_recipes())} "
                        "(or a path to a .yaml file)")
    return shipped


def parse_overrides(overrides: list[str]) -> dict:
    """["optim.lr=0.02"] -> {"optim": {"lr": 0.02}}; an unknown section or key is blamed on its --set."""
    nested: dict = {}
    sections = typing.get_type_hints(Config)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key.count(".") != 1:
            raise UserError(f"--set {item!r}: expected section.key=value, e.g. optim.lr=0.02")
        group, name = key.split(".")
        if group not in sections:
            raise UserError(f"--set {item}: unknown section {group!r}; valid: {', '.join(sections)}")
        fields = typing.get_type_hints(sections[group])
        if name not in fields:
            raise UserError(f"--set {item}: unknown key {key}; valid: {', '.join(fields)}")
        nested.setdefault(group, {})[name] = yaml.safe_load(value) if value else value
    return nested


def load_config(recipe: str | None = None, overrides: list[str] = ()) -> Config:
    raw: dict = {}
    source = "defaults"
    if recipe:
        path = recipe_path(recipe)
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(raw, dict):
            raise UserError(f"{path}: expected a mapping of sections (data, model, optim, run)")
    for group, values in parse_overrides(list(overrides)).items():
        raw.setdefault(group, {})
        if not isinstance(raw[group], dict):
            raise UserError(f"{source}: section {group!r} must be a mapping")
        raw[group].update(values)
    return from_dict(raw, source)


def to_yaml(cfg: Config, *, compact: bool = False) -> str:
    """The config as a recipe file; `compact`: one line per section (still YAML), as printed at start."""
    if compact:
        return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None, width=float("inf"))
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def flatten(cfg: Config) -> dict[str, object]:
    """{"optim.lr": 0.01, ...}: MLflow params and the printed config use these keys."""
    return {f"{g}.{k}": v for g, values in cfg.to_dict().items() for k, v in values.items()}
