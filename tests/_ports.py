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
    """The session-wide Serve proxy port: ``BIZRA_TEST_PORT`` if set, else a free port."""
    value = os.environ.get("BIZRA_TEST_PORT")
    return int(value) if value else free_port()
