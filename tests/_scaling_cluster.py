"""Run as a subprocess by test_serve_scaling.py: its own Ray cluster declaring 2 GPUs (none real).

Deploys a GPU-profile-shaped graph (fractional num_gpus, 2 VoiceServer replicas) with tiny models on the
CPU, opens sessions through the proxy one after another (each admitted, so ongoing, before the next is
routed; all held until the last is in, however slow the prefill), and prints one JSON line: where replicas
landed and where each session went. Serve and Ray are shut down whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("NO_TORCH_COMPILE", "1")
os.environ.setdefault("RAY_worker_niceness", "0")  # the engine at normal priority (see tests/conftest.py)

PORT = int(os.environ.get("BIZRA_SCALING_PORT", "8012"))


async def hold_session(url: str, release: asyncio.Event, admitted: asyncio.Event) -> dict:
    """One idle session: its ``session.started`` event (or why it got none), held until ``release``."""
    import websockets

    from bizra_voice import protocol as P

    started: dict = {"error": []}
    async with websockets.connect(url, compression=None, max_size=None, open_timeout=60) as ws:
        try:
            while True:
                msg = P.decode(await asyncio.wait_for(ws.recv(), 180), max_bytes=1 << 24)
                if msg.kind == P.Kind.METADATA and msg.json().get("type") == "session.started":
                    started = msg.json()
                    break
                if msg.kind == P.Kind.ERROR:
                    started["error"].append(msg.text())
        except websockets.ConnectionClosed:
            admitted.set()
            return {**started, "close": ws.close_code}
        admitted.set()
        await release.wait()
        await ws.close()
        return started


def main(cache_dir: str) -> dict:
    import ray
    from ray import serve

    from bizra_voice.app import build_app
    from bizra_voice.chat_client import chat_url

    ray.init(address="local", num_cpus=8, num_gpus=2, include_dashboard=False, namespace="serve", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "NO_TORCH_COMPILE": "1"}})
    try:
        args = {
            "profile": "gpu",
            "cache_dir": cache_dir,
            "tiny_engine": True,
            "engine": {"device": "cpu", "dtype": "float32", "slots": 2, "cuda_graphs": False},
            "voice_server": {"num_gpus": 0.7, "num_cpus": 1, "min_replicas": 2, "max_replicas": 2},
            "knowledge": {"enabled": True, "tiny_random": True, "device": "cpu", "dtype": "float32", "num_gpus": 0.2,
                          "max_new_tokens": 8},
            "transcriber": {"enabled": True, "tiny_random": True, "device": "cpu", "num_gpus": 0.1},
        }
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        serve.run(build_app(args), name="bizra", route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{PORT}"

        async def sessions():
            url = chat_url(base)
            release = asyncio.Event()
            holders = []
            for _ in range(4):  # one after another, each admitted (ongoing) before the next is routed
                admitted = asyncio.Event()
                holders.append(asyncio.create_task(hold_session(url, release, admitted)))
                await asyncio.wait([holders[-1], asyncio.create_task(admitted.wait())],
                                   return_when=asyncio.FIRST_COMPLETED)
            release.set()
            return await asyncio.gather(*holders)

        started = asyncio.run(sessions())
        replicas = {s.get("replica"): s.get("gpu_ids") for s in started}
        return {
            "cluster_gpus": ray.cluster_resources().get("GPU"),
            "replica_gpu_ids": replicas,
            "sessions": [{k: s.get(k) for k in ("replica", "gpu_ids", "slot", "error", "close")} for s in started],
        }
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


if __name__ == "__main__":
    started = time.monotonic()
    out = main(sys.argv[1])
    out["seconds"] = round(time.monotonic() - started, 1)
    print("SCALING_REPORT " + json.dumps(out))
