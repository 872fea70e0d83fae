"""docs/config.md, generated from alexnet/config.py: every key, its type, default and meaning (the
comment beside the field, which is the one place it is written), and what each shipped recipe
sets it to. `tests/train/test_config.py` fails when the page falls behind the code.

    .venv/bin/python -m tests.support.config_reference     # rewrite docs/config.md
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from pathlib import Path

import yaml

from alexnet import config

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "config.md"
FIELD = re.compile(r"^\s+(\w+): [^=]+= .*?  # (.*)$")

HEADER = """# Configuration reference

One typed config (`alexnet/config.py`) with four sections. A recipe (`--recipe NAME` or a YAML file)
sets some keys, `--set section.key=value` overrides any; an unknown key or an invalid choice is an
error that names the valid ones. The resolved config is printed at the start of a run, logged as
MLflow params (`data.crop`, ...) and stored in every checkpoint. The recipe columns show what each
shipped recipe (`alexnet/recipes/`) sets; an empty cell keeps the default. A sweep's space
(`alexnet tune --space`, [tune](tune.md)) draws values for any of these keys but `data.path` and
`optim.epochs`, each drawn value checked as `--set` checks it. Generated from the code by
`python -m tests.support.config_reference`.
"""


def comments(cls) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in map(FIELD.match, inspect.getsource(cls).splitlines()) if m}


def render() -> str:
    recipes = {name: yaml.safe_load(config.recipe_path(name).read_text()) or {} for name in config.shipped_recipes()}
    lines = [HEADER]
    for section, cls in typing.get_type_hints(config.Config).items():
        notes = comments(cls)
        lines += [f"## `{section}`\n", "| key | type | default | meaning | " + " | ".join(recipes) + " |",
                  "|---|---|---|---|" + "---|" * len(recipes)]
        for f in dataclasses.fields(cls):
            set_by = [str((r.get(section) or {}).get(f.name, "")) for r in recipes.values()]
            typ = f.type if isinstance(f.type, str) else f.type.__name__
            default = repr(f.default) if isinstance(f.default, str) else str(f.default)
            meaning = notes.get(f.name, "").replace("|", "\\|")  # a table cell: escape the pipes
            lines.append(f"| `{section}.{f.name}` | {typ} | `{default}` | {meaning} | "
                         + " | ".join(f"`{v}`" if v else "" for v in set_by) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text(render())
    print(f"wrote {PAGE}")
