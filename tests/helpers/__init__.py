"""Helpers shared by several test files: waiting on conditions and starting spawned processes
together (`waiting`), and a small ledger set up for a test (`ledger`). Fixtures stay in
tests/conftest.py; these are plain functions, importable by spawned child processes."""
