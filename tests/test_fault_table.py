"""docs/FAULTS.md is what the fault markers of the suite say, no more and no less."""

from __future__ import annotations

from tests import fault_table


def test_the_fault_table_matches_the_suite():
    rows = fault_table.collect()
    assert rows, "no test carries a fault marker"
    expected = fault_table.render(rows)
    current = fault_table.TABLE.read_text() if fault_table.TABLE.is_file() else ""
    assert current == expected, "docs/FAULTS.md is out of date: run `.venv/bin/python -m tests.fault_table`"


def test_every_fault_names_an_outcome_and_a_positive_number_of_inputs():
    for row in fault_table.collect():
        assert row["outcome"].strip() and int(row["inputs"]) >= 1, row


def test_every_marked_test_file_has_an_area():
    files = {row["test"].split("::")[0] for row in fault_table.collect()}
    missing = sorted(f for f in files if fault_table.Path(f).stem not in fault_table.AREAS)
    assert not missing, f"add these test files to tests/fault_table.py AREAS: {missing}"
