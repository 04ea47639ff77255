"""Loaded by every Python subprocess the tests start (PYTHONPATH): refuse network access
beyond loopback, so no test can reach the internet by accident."""

from tests_netguard_impl import install  # noqa: E402

install()
