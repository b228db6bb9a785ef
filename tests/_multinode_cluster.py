"""Run as a subprocess by test_multinode.py: a real multi-node Ray cluster on this one machine.

Ray's own harness (``ray.cluster_utils.Cluster``) starts a head without GPUs and worker raylets that each
declare one GPU (none is real: ``engine.device: cpu``). The GPU profile's graph (VoiceServer at
``num_gpus: 0.7``, tiny engine, explicit slots, Qwen and the transcriber off) then lives through what an
operator does, while sessions stream through the head's Serve proxy:

- ``grow``: one GPU node, one replica; two sessions put it past its target and autoscaling asks for a
  second replica, which stays pending (no GPU left); a second GPU node joins -> that replica is placed there
  and a new session is served there while the first node's sessions stream on.
- ``remove``: the first node is retired the way an operator retires a machine: drained (GCS's drain API),
  a grace to tell its sessions, then stopped (SIGTERM to its raylet); what its sessions see, where they
  reconnect, and that the survivor's session never notices.
- ``kill``: a third GPU node joins (the replacement replica is placed there), then the second node is
  killed (SIGKILL); its sessions' close codes and where they reconnect.
- ``warm``: a second app with ``voice_server.warm_every_gpu``: a node joins -> a replica follows with no
  session open, and no replica beyond the GPU shares is asked for.

Prints one line ``MULTINODE_REPORT {json}``: per phase what happened and when (seconds since the script
started). Every phase runs even if an earlier one failed (its error is reported); Serve, Ray and the
cluster are shut down whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for key, value in {
    "RAY_AUTH_MODE": "disabled",
    "NO_TORCH_COMPILE": "1",
    "RAY_worker_niceness": "0",  # the engine at normal priority (see tests/conftest.py)
    "PYTHONPATH": str(REPO),  # inherited by every raylet and so by every worker
    # replicas push their session counts every second (default 10 s): autoscaling sees load quickly
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
}.items():
    os.environ.setdefault(key, value)

PORT = int(os.environ.get("BIZRA_MULTINODE_PORT", "8013"))
APP, WARM_APP = "bizra", "bizra-warm"
T0 = time.monotonic()
# GCS notices a raylet that stopped answering after period x threshold (default 3 s x 5); faster here so a
# killed node is declared dead within seconds. A property of this test cluster only.
HEAD_SYSTEM_CONFIG = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
WAIT_S = 120.0  # generous bound for any one awaited cluster event (a replica placed, a session started)
DRAIN_NOTICE_S = 1.0  # reliability.drain_notice_s of the app: session.draining, then 1001 this much later
DRAIN_GRACE_S = DRAIN_NOTICE_S + 5.0  # between a node's drain request and its stop (enough to be told)
STREAM_S = 400  # audio each session streams: longer than the whole scenario (~100 s; 135 s on a busy machine)


def now() -> float:
    return round(time.monotonic() - T0, 2)


def app_args(cache_dir: str, **voice_server: Any) -> dict:
    """The GPU profile's shape with tiny models on the CPU: 3 slots, autoscaling past 1.5 sessions a replica
    (room for a removed node's two sessions beside the survivor's one)."""
    return {
        "profile": "gpu",
        "cache_dir": cache_dir,
        "tiny_engine": True,
        "engine": {"device": "cpu", "dtype": "float32", "slots": 3, "cuda_graphs": False,
                   "admission_window_s": 0.0},  # the busy test machine's ticks must not refuse sessions
        "voice_server": {"num_gpus": 0.7, "num_cpus": 1, "min_replicas": 1, "max_replicas": 2,
                         "target_session_fraction": 0.5, "upscale_delay_s": 1.0, "downscale_delay_s": 600.0,
                         **voice_server},
        "knowledge": {"enabled": False},
        "transcriber": {"enabled": False},
        "reliability": {"drain_notice_s": DRAIN_NOTICE_S},
    }


# ---------------------------------------------------------------- the cluster


class GpuCluster:
    """Ray's multi-node harness: a head with no GPU and worker nodes that declare one GPU each."""

    def __init__(self) -> None:
        from ray._common.utils import get_ray_address_file

        self._address_file = Path(get_ray_address_file(None))
        self._address_before = self._address_file.read_text() if self._address_file.exists() else None
        self.cluster = None
        self.nodes: dict[str, Any] = {}  # name -> ray._private.node.Node

    def start(self) -> None:
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "num_gpus": 0, "include_dashboard": False, "object_store_memory": 150 << 20,
            "_system_config": HEAD_SYSTEM_CONFIG})
        self._restore_address_file()  # the harness points `ray status` etc. on this machine at its cluster
        ray.init(address=self.cluster.address, namespace="serve", log_to_driver=False)
        # One proxy, on the head: on one machine every node's proxy would want the same port.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": PORT})

    def _restore_address_file(self) -> None:
        with contextlib.suppress(OSError):
            if self._address_before is None:
                self._address_file.unlink()
            else:
                self._address_file.write_text(self._address_before)

    def add_gpu_node(self, name: str) -> str:
        """Start a worker raylet declaring one GPU; its node id once GCS lists it alive."""
        node = self.cluster.add_node(num_cpus=2, num_gpus=1, object_store_memory=150 << 20)
        self.nodes[name] = node
        return node.node_id

    def remove(self, name: str, *, graceful: bool) -> None:
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=graceful)

    def node_id(self, name: str) -> str:
        return self.nodes[name].node_id

    def shutdown(self) -> None:
        import ray
        from ray import serve

        for step in (serve.shutdown, ray.shutdown, self.cluster.shutdown if self.cluster else None):
            if step is not None:
                with contextlib.suppress(Exception):
                    step()


def drain_node(node_id: str, deadline_s: float, message: str) -> tuple[bool, str]:
    """What `ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION` (and a cluster autoscaler) asks GCS."""
    import ray
    from ray.core.generated import autoscaler_pb2

    gcs = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)
    deadline_ms = time.time_ns() // 1_000_000 + int(deadline_s * 1000)
    return gcs.drain_node(node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
                          message, deadline_ms)


def draining_nodes() -> dict[str, int]:
    """GCS's draining nodes (node id -> deadline ms) as Serve's controller could read them."""
    from ray._private import state

    return dict(state.state.get_draining_nodes())


def node_entry(node_id: str) -> dict:
    """A node's ``ray.nodes()`` entry without its resource maps (what a public API shows of a drain)."""
    import ray

    entry = next((n for n in ray.nodes() if n["NodeID"] == node_id), {})
    return {k: v for k, v in entry.items() if k not in ("Resources", "Labels")}


def voice_replicas(app: str) -> dict[str, dict]:
    """VoiceServer replicas of ``app`` in the GCS actor table: unique id -> actor state and node id."""
    from ray._private import state

    prefix = f"SERVE_REPLICA::{app}#VoiceServer#"
    out = {}
    for info in state.actors().values():
        name = info.get("Name") or ""
        if name.startswith(prefix) and info["State"] != "DEAD":
            out[name[len(prefix):]] = {"state": info["State"], "node": info["Address"]["NodeID"]}
    return out


def replica_states(app: str) -> dict[str, int]:
    from ray import serve

    status = serve.status().applications.get(app)
    deployment = status.deployments.get("VoiceServer") if status else None
    return {str(k): int(v) for k, v in (deployment.replica_states if deployment else {}).items()}


def until(what: str, check, timeout_s: float = WAIT_S, every_s: float = 0.1):
    """Poll ``check`` until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(every_s)


# ---------------------------------------------------------------- sessions


class Stream:
    """One ``/api/chat`` session streaming low noise in real time until stopped; notes what it saw."""

    def __init__(self, url: str, chunks: list[bytes], name: str) -> None:
        self.url, self.chunks, self.name = url, chunks, name
        self.started: asyncio.Future = asyncio.get_running_loop().create_future()
        self.events: list[dict] = []
        self.errors: list[str] = []
        self.frames = 0
        self.close: tuple[int | None, str] = (None, "")
        self.closed_at: float | None = None
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    @property
    def replica(self) -> str | None:
        return self.started.result().get("replica") if self.started.done() and not self.started.exception() \
            else None

    def saw(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("type") == kind]

    def summary(self) -> dict:
        return {"name": self.name, "replica": self.replica, "frames": self.frames, "close": list(self.close),
                "closed_at": self.closed_at, "errors": self.errors[-2:],
                "draining": self.saw("session.draining")[:1]}

    async def _run(self) -> None:
        import websockets

        from bizra_voice import protocol as P

        try:
            async with websockets.connect(self.url, compression=None, max_size=None, open_timeout=30) as ws:
                async def read() -> None:
                    try:
                        async for raw in ws:
                            msg = P.decode(raw, 1 << 24)
                            if msg.kind == P.Kind.METADATA:
                                event = msg.json()
                                self.events.append(event)
                                if event.get("type") == "session.started" and not self.started.done():
                                    self.started.set_result(event)
                            elif msg.kind == P.Kind.ERROR:
                                self.errors.append(msg.text())
                            elif msg.kind == P.Kind.AUDIO:
                                self.frames += 1
                    except websockets.ConnectionClosed:
                        pass

                reader = asyncio.create_task(read())
                # audio once the session is in (a client starts after the handshake), in real time
                await asyncio.wait([reader, asyncio.ensure_future(asyncio.shield(self.started))],
                                   timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
                t0 = time.monotonic()
                for k, chunk in enumerate(self.chunks if self.started.done() else []):
                    if self.stop.is_set() or reader.done():
                        break
                    try:
                        await ws.send(P.audio(chunk))
                    except websockets.ConnectionClosed:
                        break
                    await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.08 - time.monotonic()))
                if not reader.done():
                    await ws.close()
                await reader
                self.close = (ws.close_code, ws.close_reason or "")
        except Exception as exc:  # the connection failed outright (e.g. refused while a node dies)
            self.close = (None, f"{type(exc).__name__}: {exc}")
        self.closed_at = now()
        if not self.started.done():
            self.started.set_exception(RuntimeError(f"no session.started: {self.close} {self.errors[-1:]}"))


async def open_stream(url: str, chunks: list[bytes], name: str, within_s: float = WAIT_S) -> tuple[Stream, list]:
    """A started session, opened again after a refusal or a failed connection (what a reconnecting
    client does); returns it and what the failed attempts were told."""
    tried: list = []
    deadline = time.monotonic() + within_s
    while True:
        stream = Stream(url, chunks, name)
        try:
            await stream.started
            return stream, tried
        except RuntimeError:
            await asyncio.gather(stream.task, return_exceptions=True)
            tried.append(list(stream.close))
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} never started: {tried[-3:]}") from None
            await asyncio.sleep(0.5)


class Clients:
    """The WebSocket clients live on an event loop of their own thread: the main thread drives the cluster
    (Ray's harness installs signal handlers, which only the main thread may) and blocks on Ray calls while
    the sessions keep streaming."""

    def __init__(self, url: str, chunks: list[bytes]) -> None:
        import threading

        self.url, self.chunks = url, chunks
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="clients", daemon=True)
        self.thread.start()

    def _run(self, coro, timeout_s: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def open(self, name: str, within_s: float = WAIT_S) -> tuple[Stream, list]:
        return self._run(open_stream(self.url, self.chunks, name, within_s))

    def wait_closed(self, streams: list[Stream], timeout_s: float = 60.0) -> None:
        async def closed() -> None:
            await asyncio.wait([s.task for s in streams], timeout=timeout_s)

        self._run(closed())

    def stop(self, streams: list[Stream]) -> None:
        async def stopped() -> None:
            for s in streams:
                s.stop.set()
            await asyncio.gather(*(s.task for s in streams), return_exceptions=True)

        self._run(stopped(), 60.0)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def frames_grow(streams: list[Stream], by: int, timeout_s: float = 60.0) -> dict[str, list[int]]:
    """Wait until every stream has received ``by`` more frames (it is still streaming): before/after."""
    before = {s.name: s.frames for s in streams}
    deadline = time.monotonic() + timeout_s
    while any(s.frames < before[s.name] + by for s in streams):
        ended = [s.summary() for s in streams if s.task.done()]
        if ended:
            raise AssertionError(f"a session ended while it should stream: {ended}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"frames did not grow by {by}: {before} -> {[s.frames for s in streams]}")
        time.sleep(0.05)
    return {s.name: [before[s.name], s.frames] for s in streams}


# ---------------------------------------------------------------- the scenario


def phase(report: dict, name: str, body, needs: str | None = None) -> dict:
    """Run one phase; its error (if any) is reported and the next phase still runs, unless it ``needs``
    what a failed phase should have left (then it is skipped, saying so)."""
    phases = report.setdefault("phases", {})
    out = phases[name] = {"start": now()}
    try:
        if needs is not None and "error" in phases.get(needs, {}):
            raise RuntimeError(f"skipped: phase {needs!r} failed")
        body(out)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc()[-2000:]
    out["end"] = now()
    return out


def replica_on(app: str, node_id: str) -> str | None:
    return next((rid for rid, r in voice_replicas(app).items() if r["node"] == node_id and r["state"] == "ALIVE"),
                None)


def proxy_reaches(base: str, replica: str) -> bool:
    """The head's proxy routes to ``replica`` (it learns of a new replica a moment after Serve runs it):
    a health request lands there (with sessions elsewhere, power of two choices picks the idle one)."""
    try:
        with urllib.request.urlopen(f"{base}/api/health", timeout=5) as resp:
            return json.loads(resp.read()).get("replica") == replica
    except OSError:
        return False


def scenario(gc: GpuCluster, clients: Clients, cache_dir: str, report: dict) -> None:
    import ray
    from ray import serve

    from bizra_voice.app import build_app

    base = f"http://127.0.0.1:{PORT}"
    live: dict[str, Stream] = {}

    def grow(out: dict) -> None:
        n1 = gc.add_gpu_node("n1")
        serve.run(build_app(app_args(cache_dir)), name=APP, route_prefix="/", blocking=False)
        until("replica on n1 running", lambda: replica_states(APP).get("RUNNING", 0) >= 1)
        out["deployed"] = now()
        for name in ("s1", "s2"):  # past the replica's target (half its slots): autoscaling wants another
            live[name], _ = clients.open(name)
        r1 = live["s1"].replica
        out["r1"] = {"replica": r1, "node_is_n1": voice_replicas(APP).get(r1, {}).get("node") == n1,
                     "sessions": [live["s1"].replica, live["s2"].replica]}
        asked = until("autoscaling asks for a second replica", lambda: [
            rid for rid, r in voice_replicas(APP).items() if rid != r1 and r["state"] != "ALIVE"])
        time.sleep(2.0)  # still pending a moment later: no node can hold it
        out["pending"] = {"at": now(), "replica": asked[0], "states": replica_states(APP),
                          "actor_state": voice_replicas(APP).get(asked[0], {}).get("state"),
                          "gpu_available": ray.available_resources().get("GPU", 0.0)}
        first = [live["s1"], live["s2"]]
        frames_at_join = {s.name: s.frames for s in first}
        out["join_2"] = at = {"called": now()}
        n2 = gc.add_gpu_node("n2")
        at["joined"] = now()
        r2 = until("replica on n2 running", lambda: replica_on(APP, n2) if replica_states(APP).get(
            "RUNNING", 0) >= 2 else None)
        at["ready"] = now()
        until("the proxy routes to the new replica", lambda: proxy_reaches(base, r2))
        at["routed"] = now()
        live["s3"], tried = clients.open("s3")
        at["first_session"] = now()
        out["r2"] = {"replica": r2, "pending_one_placed": r2 == asked[0], "s3_replica": live["s3"].replica,
                     "s3_refused_first": tried}
        out["first_node_sessions"] = {"frames_at_join": frames_at_join, "frames_after": frames_grow(first, 10),
                                      "draining_events": sum(len(s.saw("session.draining")) for s in first),
                                      "open": [not s.task.done() for s in first]}

    phase(report, "grow", grow)

    def remove(out: dict) -> None:
        victims, keeper = [live["s1"], live["s2"]], live["s3"]
        n1 = gc.node_id("n1")
        # How an operator retires a machine: drain it (GCS places nothing new there), give its sessions a
        # grace to be told and to move, then stop it (SIGTERM to its raylet, as `ray stop` or a pod delete).
        out["drain_request"] = {"at": now(), "accepted": list(drain_node(n1, 60.0, "retiring n1"))}
        deadline = time.monotonic() + DRAIN_GRACE_S
        while time.monotonic() < deadline and not all(s.task.done() for s in victims):
            time.sleep(0.1)
        out["after_grace"] = {"at": now(), "states": replica_states(APP), "replicas": voice_replicas(APP),
                              "gcs_draining": draining_nodes(), "ray_nodes_entry": node_entry(n1),
                              "victims": [s.summary() for s in victims]}
        keeper_frames = keeper.frames
        out["remove_called"] = now()
        gc.remove("n1", graceful=True)
        out["removed"] = now()
        clients.wait_closed(victims)
        out["victims_after"] = [s.summary() for s in victims]
        out["keeper"] = {"frames": frames_grow([keeper], 10), "frames_at_removal": keeper_frames,
                         "draining_events": len(keeper.saw("session.draining")), "open": not keeper.task.done(),
                         "replica": keeper.replica}
        out["reconnected"] = []
        for s in victims:
            live[s.name], tried = clients.open(s.name + "-again")
            out["reconnected"].append({"replica": live[s.name].replica, "refused_first": tried, "at": now()})
        out["replicas"] = voice_replicas(APP)

    phase(report, "remove", remove, needs="grow")

    def kill(out: dict) -> None:
        out["join_3"] = at = {"called": now()}
        n3 = gc.add_gpu_node("n3")  # the replacement replica (still wanted: the load asks for two)
        at["joined"] = now()
        out["r3"] = until("replacement replica on n3 running", lambda: replica_on(APP, n3)
                          if replica_states(APP).get("RUNNING", 0) >= 2 else None)
        at["ready"] = now()
        n2 = gc.node_id("n2")
        victims = [s for s in live.values() if not s.task.done()]
        out["victims_on_n2"] = [voice_replicas(APP).get(s.replica, {}).get("node") == n2 for s in victims]
        out["kill_called"] = now()
        gc.remove("n2", graceful=False)  # SIGKILL: the machine is gone
        out["killed"] = now()
        clients.wait_closed(victims)
        out["victims_after"] = [s.summary() for s in victims]
        out["reconnected"] = []
        for s in victims:
            live[s.name], tried = clients.open(s.name + "-again")
            out["reconnected"].append({"replica": live[s.name].replica, "refused_first": tried, "at": now()})

    phase(report, "kill", kill, needs="remove")
    clients.stop(list(live.values()))
    with contextlib.suppress(Exception):
        serve.delete(APP)

    def warm(out: dict) -> None:
        if not gc.nodes:
            gc.add_gpu_node("n-warm-0")
        out["gpu_nodes_before"] = len(gc.nodes)
        out["cluster_gpus"] = ray.cluster_resources().get("GPU", 0.0)
        args = app_args(cache_dir, warm_every_gpu=True, max_replicas=4)
        serve.run(build_app(args), name=WARM_APP, route_prefix="/warm", blocking=False)
        until("a warm replica per GPU node", lambda: replica_states(WARM_APP).get("RUNNING", 0) >= len(gc.nodes))
        out["deployed"] = {"at": now(), "states": replica_states(WARM_APP)}
        out["join"] = at = {"called": now()}
        joined = gc.add_gpu_node("n-warm")
        at["joined"] = now()
        at["replica"] = until("a replica follows the node, no session open", lambda: replica_on(WARM_APP, joined)
                              if replica_states(WARM_APP).get("RUNNING", 0) > out["gpu_nodes_before"] else None)
        at["ready"] = now()
        from bizra_voice.serve.autoscaling import NODES_REFRESH_S

        time.sleep(2 * NODES_REFRESH_S + 1.0)  # the policy has re-read the cluster since: no replica beyond it
        out["settled"] = {"states": replica_states(WARM_APP), "gpu_nodes": len(gc.nodes),
                          "replicas": voice_replicas(WARM_APP)}
        serve.delete(WARM_APP)

    phase(report, "warm", warm)


def main(cache_dir: str) -> dict:
    import numpy as np

    from bizra_voice.audio import encode_ogg
    from bizra_voice.chat_client import chat_url
    from bizra_voice.constants import SAMPLE_RATE

    report: dict = {"port": PORT}
    noise = 0.02 * np.random.default_rng(0).standard_normal(STREAM_S * SAMPLE_RATE)
    chunks = encode_ogg(noise.astype(np.float32))
    clients = Clients(chat_url(f"http://127.0.0.1:{PORT}"), chunks)
    gc = GpuCluster()
    try:
        gc.start()
        report["cluster_started"] = now()
        scenario(gc, clients, cache_dir, report)
    except Exception:
        report["error"] = traceback.format_exc()[-3000:]
    finally:
        gc.shutdown()
        clients.close()
    report["seconds"] = now()
    return report


if __name__ == "__main__":
    print("MULTINODE_REPORT " + json.dumps(main(sys.argv[1])), flush=True)
