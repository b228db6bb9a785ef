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


def node_draining_flag() -> Callable[[], bool] | None:
    """A function returning True once the Ray node this replica runs on is being drained (``ray drain-node``,
    an autoscaler or KubeRay retiring it), or None where that cannot be read. Open-source Serve 2.53 does not
    act on draining nodes itself, so the replica has to notice (read through Ray's state API, defensively)."""
    try:
        import ray
        from ray._private.state import state

        node_id = ray.get_runtime_context().get_node_id()
    except Exception:
        return None

    def draining() -> bool:
        try:
            return node_id in state.get_draining_nodes()
        except Exception:  # the GCS briefly unreachable: not a drain
            return False

    return draining


async def watch_for_node_drain(on_drain: Callable[[], Awaitable[None]], interval_s: float = 0.5) -> None:
    """Poll whether this replica's node is being drained and run ``on_drain`` once when it is."""
    flag = node_draining_flag()
    if flag is None:
        log.info("node drain watcher unavailable (no Ray state access)")
        return
    while not await asyncio.to_thread(flag):
        await asyncio.sleep(interval_s)
    await on_drain()
