"""The loader that an MLflow model's MLmodel names (`loader_module: alexnet_pyfunc_loader`), copied
into the model's `code/` folder by alexnet.serve.model_files.save_model. MLflow puts `code/` first
on sys.path when it loads the model, so this file must import nothing but the standard library
at the top and must not be named like a package of the project: a copy of `alexnet/` there would
hide the installed project from the rest of the process.

Where the project is installed, its own loader reads the model. Where it is not (a clean
virtualenv holding only the model's requirements.txt, `mlflow models serve` elsewhere), the
snapshot of the project's packages saved beside this file, in `code/project/`, is put on the
path and its loader reads the model: the same code that trained and logged it.
"""

from __future__ import annotations

import sys
from pathlib import Path

SNAPSHOT = "project"  # beside this file: the alexnet/ and pipelines/ packages as they were at logging time


def _load_pyfunc(data_path: str):
    try:
        from alexnet.serve.model_files import _load_pyfunc as load
    except ImportError:
        sys.path.append(str(Path(__file__).resolve().parent / SNAPSHOT))
        from alexnet.serve.model_files import _load_pyfunc as load
    return load(data_path)
