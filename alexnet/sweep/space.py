"""A sweep's search space: config keys with distributions, read from YAML and checked against the
typed config before anything starts.

    optim.lr: loguniform(1e-4, 1e-2)
    optim.weight_decay: choice(0.0, 1e-4, 5e-4)
    model.dropout: uniform(0.2, 0.6)
    optim.batch_size: choice(64, 128, 256)

Distributions are Ray Tune's: uniform(low, high) and loguniform(low, high) for number keys,
randint(low, high) for integer keys (high excluded, as in Tune), choice(v1, v2, ...) for any key.
A key is a config key that `--set` takes; every value a distribution can draw goes through the
same coercion and checks as `--set`, so a space that can only draw bad trials is refused at start.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from alexnet.config import Config, from_dict
from pipelines.errors import UserError

KINDS = ("uniform", "loguniform", "randint", "choice")
# Keys a sweep holds fixed: it searches one dataset, and ASHA's rungs are epochs of one length.
FIXED = {"data.path": "a sweep searches one dataset (--data)",
         "optim.epochs": "every trial runs the same epochs (--set optim.epochs=N), which ASHA's rungs count"}
_CALL = re.compile(r"^\s*([a-z]+)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Dist:
    kind: str  # one of KINDS
    args: tuple  # (low, high) or the choices

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(repr(a) if isinstance(a, str) else str(a) for a in self.args)})"

    def candidates(self) -> tuple:
        """The values to check a key against: every choice, or a range's ends (and for randint its last value)."""
        if self.kind == "choice":
            return self.args
        if self.kind == "randint":
            return (self.args[0], self.args[1] - 1)
        return self.args


Space = dict  # config key ("optim.lr") -> Dist, in the file's order


def parse_dist(key: str, text, where: str) -> Dist:
    """'loguniform(1e-4, 1e-2)' -> Dist; anything else is a UserError naming the key."""
    match = _CALL.match(text) if isinstance(text, str) else None
    if not match or match.group(1) not in KINDS:
        raise UserError(f"{where}: {key}: {text!r} is not a distribution; expected one of "
                        f"{', '.join(k + '(...)' for k in KINDS)}")
    kind, inner = match.groups()
    try:
        args = [_number(a) for a in yaml.safe_load(f"[{inner}]")]
    except yaml.YAMLError:
        raise UserError(f"{where}: {key}: cannot read the arguments of {text.strip()!r}") from None
    if kind == "choice":
        if not args:
            raise UserError(f"{where}: {key}: choice() needs at least one value")
        return Dist(kind, tuple(args))
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise UserError(f"{where}: {key}: {kind}(low, high) takes two numbers, got {text.strip()!r}")
    low, high = args
    if not all(math.isfinite(a) for a in args) or not low < high:
        raise UserError(f"{where}: {key}: {kind}({low}, {high}) needs finite low < high")
    if kind == "loguniform" and low <= 0:
        raise UserError(f"{where}: {key}: loguniform({low}, {high}) needs low > 0")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise UserError(f"{where}: {key}: randint({low}, {high}) takes integers")
    return Dist(kind, (low, high))


def _number(value):
    """YAML 1.1 reads 1e-4 (no dot) as a string; a sweep means the number."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def parse_space(raw, where: str) -> Space:
    """A mapping of config keys to distribution strings -> Space (keys checked against the config's fields)."""
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{where}: expected a mapping of config keys to distributions, "
                        f"e.g. `optim.lr: loguniform(1e-4, 1e-2)`")
    sections = typing.get_type_hints(Config)
    space: Space = {}
    for key, text in raw.items():
        group, _, name = str(key).partition(".")
        if group not in sections or name not in typing.get_type_hints(sections[group]):
            valid = ", ".join(f"{g}.{f}" for g, cls in sections.items() for f in typing.get_type_hints(cls))
            raise UserError(f"{where}: unknown config key {key!r}; valid: {valid}")
        if key in FIXED:
            raise UserError(f"{where}: {key} cannot be searched: {FIXED[key]}")
        dist = parse_dist(key, text, where)
        kind_of_field = typing.get_type_hints(sections[group])[name]
        if dist.kind in ("uniform", "loguniform") and kind_of_field is not float:
            raise UserError(f"{where}: {key} takes {kind_of_field.__name__} values; {dist.kind} draws real "
                            f"numbers: use choice(...)" + (" or randint(low, high)" if kind_of_field is int else ""))
        if dist.kind == "randint" and kind_of_field not in (int, float):
            raise UserError(f"{where}: {key} takes {kind_of_field.__name__} values; use choice(...)")
        space[key] = dist
    return space


def load_space(path: str | Path) -> Space:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--space {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"--space {path}: not valid YAML: {err}") from None
    return parse_space(raw, f"--space {path}")


def apply(cfg: Config, params: dict) -> Config:
    """`cfg` with a trial's sampled values ({"optim.lr": 0.003, ...}), coerced and checked as --set is."""
    raw = cfg.to_dict()
    for key, value in params.items():
        group, name = key.split(".")
        raw[group][name] = value
    return from_dict(raw, "sweep")


def check_space(space: Space, base: Config, where: str, check=lambda cfg: None) -> None:
    """Every value the space can draw makes a valid config on top of `base` (and passes `check`,
    e.g. the batch size against the dataset); the first that does not is a UserError naming it."""
    for key, dist in space.items():
        for value in dist.candidates():
            try:
                check(apply(base, {key: value}))
            except UserError as err:
                raise UserError(f"{where}: {key}: {dist} can draw {value!r}, which the run refuses: {err}") from None


def to_tune(space: Space) -> dict:
    """Space -> Ray Tune's search-space dict (the same keys)."""
    from ray import tune  # deferred: parsing and checking a space needs no Ray

    make = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    return {key: tune.choice(list(d.args)) if d.kind == "choice" else make[d.kind](*d.args)
            for key, d in space.items()}


def describe(space: Space) -> dict[str, str]:
    """{"optim.lr": "loguniform(0.0001, 0.01)"}: the space as the sweep's MLflow params."""
    return {key: str(dist) for key, dist in space.items()}
