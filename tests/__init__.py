"""The test suite: one folder per area, shared helpers in tests/support, fixtures in conftest."""
