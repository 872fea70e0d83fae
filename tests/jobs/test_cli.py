"""The command line: help for every subcommand, and bad input as one clear line with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jobs.cli import COMMANDS, build_parser, main
from tests.support import cli_here as _here


def _alexnet(*args, timeout=120):
    """As a user runs it, in its own process (for what only a fresh process shows)."""
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_subcommand_and_each_has_help():
    out = _alexnet("--help").stdout  # once as a user runs it: the module's entry point
    parser = build_parser()
    sub = parser._subparsers._group_actions[0]
    assert set(sub.choices) >= {"demo", "ingest", "train"}
    for name in sub.choices:
        assert name in out
        assert _help(parser, name).startswith("usage: alexnet " + name)


def _help(parser, name: str) -> str:
    """In this process: a subprocess per subcommand would import the CLI once each."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        parser.parse_args([name, "--help"])
    assert exit_.value.code == 0
    return out.getvalue()


def _assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.fault("`demo --workdir` naming a file", inputs=1,
                   outcome="exit 2, one line, no traceback")
def test_demo_workdir_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    _assert_one_line_error(_here("demo", "--workdir", str(f)), "--workdir", str(f), "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; covered by the read-only path below")
def test_demo_workdir_unwritable(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    _assert_one_line_error(_here("demo", "--workdir", str(d / "work")), "not writable")


@pytest.mark.fault("`demo --workdir` under /proc (read-only)", inputs=1,
                   outcome="exit 2, one line, no traceback")
def test_demo_workdir_on_a_read_only_place():
    # /proc refuses new directories even for root.
    _assert_one_line_error(_here("demo", "--workdir", "/proc/alexnet-work"), "--workdir", "not writable")


@pytest.mark.fault("`--set optim.lrr=0.1`", inputs=1,
                   outcome="exit 2, one line naming the key and the valid ones")
def test_train_unknown_config_key_names_the_valid_ones(tmp_path):
    r = _here("train", "--recipe", "smoke", "--data", str(tmp_path), "--set", "optim.lrr=0.1", "--workdir", str(tmp_path))
    _assert_one_line_error(r, "optim.lrr", "valid:", "lr")


@pytest.mark.fault("`--set model.arch=vgg`", inputs=1,
                   outcome="exit 2, one line naming the architectures")
def test_train_unknown_arch(tmp_path):
    r = _here("train", "--recipe", "smoke", "--data", str(tmp_path), "--set", "model.arch=vgg", "--workdir", str(tmp_path))
    _assert_one_line_error(r, "vgg", "torchvision")


@pytest.mark.fault("--data naming a folder that does not exist", inputs=1,
                   outcome="exit 2, one line naming it")
def test_train_missing_dataset(tmp_path):
    r = _here("train", "--recipe", "smoke", "--data", str(tmp_path / "nope"), "--workdir", str(tmp_path))
    _assert_one_line_error(r, str(tmp_path / "nope"), "does not exist")


def test_every_command_module_is_importable():
    import importlib

    for name in COMMANDS:
        assert hasattr(importlib.import_module(name), "add_parser")


@pytest.mark.fault("`train` without --recipe", inputs=1,
                   outcome="exit 2, one line naming the shipped recipes; nothing written")
def test_train_without_a_recipe_names_the_shipped_ones(tmp_path):
    """No silent default: a forgotten --recipe would train a toy and register it."""
    r = _here("train", "--data", str(tmp_path), "--workdir", str(tmp_path / "w"))
    _assert_one_line_error(r, "--recipe is required", "torchvision", "smoke")
    assert not (tmp_path / "w").exists()


def test_train_names_the_recipe_it_runs_in_its_first_line(tmp_path):
    r = _here("train", "--recipe", "demo", "--data", str(tmp_path / "nope"), "--set", "optim.epochs=3")
    assert r.returncode == 2
    first = r.stdout.splitlines()[0]
    assert first.startswith("recipe: demo (") and "demo.yaml" in first and "optim.epochs=3" in first


@pytest.mark.fault("a password inside an option's value (`train --set`), echoed and then refused", inputs=1,
                   outcome="exit 2; neither the echoed overrides nor the error line show the password")
def test_the_cli_output_never_shows_a_password(tmp_path, capsys):
    password = "hunter2/cli@Pw"
    rc = main(["train", "--recipe", "smoke", "--data", str(tmp_path / "none"), "--workdir", str(tmp_path / "w"),
               "--set", f"optim.lr=https://user:{password}@mlflow.example.com"])
    out, err = capsys.readouterr()
    assert rc == 2 and "***@mlflow.example.com" in out + err
    assert password not in out + err and "hunter2" not in out + err
