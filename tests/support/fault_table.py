"""docs/FAULTS.md, generated from the test suite: every test marked `@pytest.mark.fault(...)`.

A fault test injects a fault or a bad input and asserts what happens; its marker says, in one
line each, what it injects, how many inputs of that kind it tries, and the outcome its assertions
check (what survived, what was lost). The table is those markers, grouped by area, so it cannot
list a fault no test injects, and `tests/layout/test_fault_table.py` fails when it falls behind the suite.

    .venv/bin/python -m tests.support.fault_table          # rewrite docs/FAULTS.md
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "FAULTS.md"

TESTS = ROOT / "tests"
# The areas, in the order the table lists them: a run's data flows through them in this order.
AREA_ORDER = ("data", "ingest", "read", "train", "track", "serve", "sweep", "jobs", "layout")


def area_of(test: str) -> tuple[int, str]:
    """(its place in AREA_ORDER, its title) for a test id tests/AREA/test_x.py::name: the title is
    what the area folder's docstring says before its colon."""
    folder = Path(test.split("::")[0]).parent
    doc = (ROOT / folder / "__init__.py").read_text().strip().strip('"')
    return AREA_ORDER.index(folder.name), doc.split(":")[0].strip()


HEADER = """# Fault table

Every fault and bad input the test suite injects, the test that injects it, how many inputs of
that kind it tries, and the outcome the test asserts (what survived, what was lost). Generated from
the tests' `@pytest.mark.fault(...)` markers by `python -m tests.support.fault_table`; the suite fails when
this file and the markers disagree. Every test listed runs in CI (`make test`).

"""


def collect() -> list[dict]:
    """The fault markers of every collected test, without running any (pytest --collect-only); each
    row also says how many cases pytest collected for that test (1 unless it is parametrized)."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "tests.support.fault_table",
                          "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True)
    rows = [line.split("\t")[1:] for line in out.stdout.splitlines() if line.startswith("FAULT\t")]
    if out.returncode != 0:  # a partial collection would quietly drop its modules' rows
        raise RuntimeError(f"collecting the tests failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return [{"test": t, "what": w, "inputs": i, "outcome": o, "cases": int(c)} for t, w, i, o, c in rows]


def pytest_collection_finish(session) -> None:
    """Plugin hook (`-p tests.support.fault_table`): print one FAULT line per marked test function; a
    parametrized test is one line, its marker's `inputs` counting the inputs over all its cases."""
    found: dict[tuple, list] = {}
    for item in session.items:
        test = item.nodeid.split("[")[0]
        for mark in item.iter_markers("fault"):
            key = (test, mark.args, tuple(sorted(mark.kwargs.items())))
            if key not in found:
                what = mark.args[0] if mark.args else mark.kwargs["what"]
                found[key] = [test, what, mark.kwargs.get("inputs", 1), mark.kwargs["outcome"], 0]
            found[key][4] += 1
    for test, what, inputs, outcome, cases in found.values():
        print(f"FAULT\t{test}\t{what}\t{inputs}\t{outcome}\t{cases}")


def render(rows: list[dict]) -> str:
    lines = [HEADER]
    for area in sorted({area_of(r["test"]) for r in rows}):
        group = sorted((r for r in rows if area_of(r["test"]) == area), key=lambda r: r["test"])
        lines += [f"## {area[1]}\n", "| fault or bad input | inputs | outcome asserted | test |", "|---|---|---|---|"]
        lines += [f"| {r['what']} | {r['inputs']} | {r['outcome']} | `{r['test']}` |" for r in group]
        lines.append("")
    lines.append(f"{len(rows)} fault tests.\n")
    return "\n".join(lines)


if __name__ == "__main__":
    TABLE.parent.mkdir(exist_ok=True)
    TABLE.write_text(render(collect()))
    print(f"wrote {TABLE}")
