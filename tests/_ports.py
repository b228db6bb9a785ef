"""Ports for the servers the tests start: free ones, so two checkouts (or a stray server) never collide."""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_test_port() -> int:
    """The session-wide Serve proxy port: ``BIZRA_TEST_PORT`` if set, else a free port, kept in
    ``BIZRA_TEST_PORT`` from then on. pytest loads ``tests/conftest.py`` as ``conftest``; a test module's
    ``from tests.conftest import BASE_URL`` runs the file again as another module, and without the variable
    that copy picked another free port: its test then polled a port no proxy listened on (the proxy was
    already started on the first one) and waited out its 300 s."""
    value = os.environ.get("BIZRA_TEST_PORT")
    if not value:
        value = os.environ["BIZRA_TEST_PORT"] = str(free_port())
    return int(value)
