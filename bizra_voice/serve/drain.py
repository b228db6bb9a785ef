"""Noticing that Ray Serve has begun stopping this replica (stop, redeploy, downscale).

Serve's graceful shutdown first waits for ongoing requests to finish and calls the deployment's
``__del__`` only afterwards; an open WebSocket session never finishes on its own, so waiting for
``__del__`` would let Serve's ``graceful_shutdown_timeout_s`` kill the replica with its sessions untold.
The replica's own shutting-down flag is set the moment the drain begins; it is not public API, so it is
looked up defensively (Ray 2.53: ``ReplicaBase._shutting_down``) and ``__del__`` remains the fallback.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("ray.serve")


def serve_shutdown_flag() -> Callable[[], bool] | None:
    """A function returning True once this process's Serve replica has started shutting down, or None."""
    try:
        from ray.serve._private.replica import ReplicaBase
    except Exception:
        return None
    replicas = [obj for obj in gc.get_objects() if isinstance(obj, ReplicaBase)]
    if len(replicas) != 1 or not hasattr(replicas[0], "_shutting_down"):
        return None
    replica = replicas[0]
    return lambda: bool(getattr(replica, "_shutting_down", False))


async def watch_for_drain(on_drain: Callable[[], Awaitable[None]], interval_s: float = 0.25) -> None:
    """Poll the replica's shutting-down flag and run ``on_drain`` once when it flips."""
    flag = serve_shutdown_flag()
    if flag is None:
        log.info("drain watcher unavailable (no Serve replica flag); relying on __del__")
        return
    while not flag():
        await asyncio.sleep(interval_s)
    await on_drain()
