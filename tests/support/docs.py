"""The commands README and docs/ show, read from their code blocks, so tests run or parse exactly
what a reader copies (tests/layout/test_docs_commands.py, tests/train/test_demo.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def code_blocks(path: Path, lang: str) -> list[str]:
    return [body for kind, body in _FENCE.findall(path.read_text()) if kind == lang]


def commands(path: Path) -> list[list[str]]:
    """Every `alexnet ...` command in the file's console/bash blocks (and indented ones), with
    `\\` continuations joined and `#` comments dropped, as argument lists without `alexnet`."""
    text = path.read_text()
    bodies = [body for kind, body in _FENCE.findall(text) if kind in ("console", "bash", "sh", "")]
    bodies.append("\n".join(line[4:] for line in text.splitlines() if line.startswith("    alexnet ")
                            or line.startswith("        ")))
    found = []
    for body in bodies:
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("alexnet "):
                found.append(shlex.split(line, comments=True)[1:])
    return found


def readme_steps() -> list[list[str]]:
    """README's own-images walk-through: the `$ alexnet` lines of its console blocks, in order."""
    steps = []
    for body in code_blocks(ROOT / "README.md", "console"):
        steps += [shlex.split(line[2:])[1:] for line in body.splitlines() if line.startswith("$ alexnet ")]
    return steps


def inline_commands(path: Path) -> list[list[str]]:
    """`alexnet ...` written inline in prose (between backticks): often partial, so only their
    subcommands and flags are checked, not their completeness."""
    return [shlex.split(m) for m in re.findall(r"`alexnet ([a-z][a-z-]*(?: [^`]*)?)`", path.read_text())]
