"""Loaded by every Python subprocess the tests start (PYTHONPATH): the product's own socket guard
(evalcore.isolation.offline), so no test can reach beyond loopback by accident."""

from evalcore.isolation.offline import install_socket_guard

install_socket_guard()
