"""One way to put an error on one line, for every message that quotes one."""

from __future__ import annotations

from pipelines.errors import first_line


def test_an_error_on_one_line_is_its_first_line_bounded_or_its_type():
    assert first_line(OSError("connection refused\n  at socket.connect\n")) == "connection refused"
    assert first_line(RuntimeError("x" * 500)) == "x" * 300
    assert first_line(RuntimeError("x" * 500), limit=10) == "x" * 10
    assert first_line(TimeoutError()) == "TimeoutError"
    assert first_line(ValueError("  \n")) == "ValueError"
