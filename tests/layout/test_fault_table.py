"""docs/FAULTS.md is what the fault markers of the suite say, no more and no less."""

from __future__ import annotations

import pytest

from tests.support import fault_table


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """Collected once: collecting the whole suite in a subprocess takes ~15 s here."""
    return fault_table.collect()


def test_the_fault_table_matches_the_suite(rows):
    assert rows, "no test carries a fault marker"
    expected = fault_table.render(rows)
    current = fault_table.TABLE.read_text() if fault_table.TABLE.is_file() else ""
    assert current == expected, "docs/FAULTS.md is out of date: run `.venv/bin/python -m tests.support.fault_table`"


def test_every_fault_names_an_outcome_and_a_positive_number_of_inputs(rows):
    for row in rows:
        assert row["outcome"].strip() and int(row["inputs"]) >= 1, row


def test_a_parametrized_fault_counts_every_case_among_its_inputs(rows):
    """Each case of a parametrized fault test injects at least one input, the same number each:
    `inputs` is a whole multiple of the cases pytest collected (3 cases x 2 commands = 6)."""
    for row in rows:
        assert int(row["inputs"]) % row["cases"] == 0, row


def test_a_collection_that_fails_is_an_error_not_a_shorter_table(tmp_path, monkeypatch):
    """A suite where one module cannot be imported (the plugin itself loads): its rows would be
    missing from the table, so collecting fails loudly."""
    broken = tmp_path / "tests" / "data"
    broken.mkdir(parents=True)
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "tests" / "support").symlink_to(fault_table.TESTS / "support")
    (broken / "__init__.py").write_text('"""Data: x"""')
    (broken / "test_fine.py").write_text("import pytest\n\n@pytest.mark.fault('x', outcome='y')\ndef test_x():\n    pass\n")
    (broken / "test_broken.py").write_text("import no_such_module_here\n")
    monkeypatch.setattr(fault_table, "ROOT", tmp_path)
    with pytest.raises(RuntimeError, match="no_such_module_here"):
        fault_table.collect()


def test_every_test_sits_in_an_area_folder_with_a_title():
    folders = {p.parent for p in fault_table.TESTS.rglob("test_*.py")}
    assert folders and {f.name for f in folders} <= set(fault_table.AREA_ORDER), sorted(f.name for f in folders)
    for folder in folders:
        place, title = fault_table.area_of(f"tests/{folder.name}/x.py::t")
        assert title and ":" in (folder / "__init__.py").read_text(), folder
