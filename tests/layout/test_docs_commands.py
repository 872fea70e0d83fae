"""Every `alexnet` command README and docs/ show is one the CLI accepts, option by option: a
renamed flag or subcommand fails here, not in a reader's terminal. (The ones that run on a laptop
also run, in order, in tests/train/test_demo.py.)"""

from __future__ import annotations

import contextlib
import io

import pytest

from jobs.cli import build_parser
import argparse

from tests.support.docs import DOCS, commands, inline_commands, readme_steps

PARSER = build_parser()


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_command_shown_parses(path):
    for argv in commands(path):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                PARSER.parse_args(argv)
        except SystemExit as exit_:
            pytest.fail(f"{path.name}: `alexnet {' '.join(argv)}` -> exit {exit_.code}: {err.getvalue().strip()}")


def _named_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub)parser the leading words of `argv` name, and the words that named it."""
    parser, names = PARSER, []
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if word.startswith("-") or not subs or word not in subs[0].choices:
            break
        parser, names = subs[0].choices[word], [*names, word]
    return parser, names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_command_and_flag_named_in_prose_exists(path):
    for argv in inline_commands(path):
        parser, names = _named_parser(argv)
        assert names, f"{path.name}: `alexnet {' '.join(argv)}`: no such command"
        rest = argv[len(names):argv.index("--")] if "--" in argv else argv[len(names):]
        for word in rest:
            flag = word.strip("[]").split("=")[0]
            if flag.startswith("--"):
                assert flag in parser._option_string_actions, (
                    f"{path.name}: `alexnet {' '.join(argv)}`: alexnet {' '.join(names)} has no {flag}")


def test_the_readme_walk_through_is_found():
    """The parser above would pass vacuously if the blocks were not found."""
    steps = readme_steps()
    assert [s[0] for s in steps] == ["ingest", "train", "ui", "predict"], steps
    assert sum(len(commands(p)) for p in DOCS) >= 8
