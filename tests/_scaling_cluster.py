"""Run as a subprocess by test_serve_scaling.py: its own Ray cluster declaring 2 GPUs (none real).

Deploys a GPU-profile-shaped graph (fractional num_gpus, 2 VoiceServer replicas) with tiny models on the
CPU, opens sessions through the proxy, and prints one JSON line: where replicas landed and where each
session went.
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

PORT = int(os.environ.get("BIZRA_SCALING_PORT", "8012"))


def main(cache_dir: str) -> dict:
    import ray
    from ray import serve

    from bizra_voice.app import build_app
    from bizra_voice.chat_client import chat_url, run_chat

    ray.init(num_cpus=8, num_gpus=2, include_dashboard=False, namespace="serve", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "NO_TORCH_COMPILE": "1"}})
    args = {
        "profile": "gpu",
        "cache_dir": cache_dir,
        "tiny_engine": True,
        "engine": {"device": "cpu", "dtype": "float32", "slots": 2, "cuda_graphs": False},
        "voice_server": {"num_gpus": 0.7, "num_cpus": 1, "min_replicas": 2, "max_replicas": 2},
        "qwen": {"enabled": True, "tiny_random": True, "device": "cpu", "dtype": "float32", "num_gpus": 0.2,
                 "max_new_tokens": 8},
        "transcriber": {"enabled": True, "tiny_random": True, "device": "cpu", "num_gpus": 0.1},
    }
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    serve.run(build_app(args), name="bizra", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{PORT}"

    async def sessions():
        url = chat_url(base)
        holders = []
        for _ in range(4):  # opened one after another: the proxy picks the less loaded replica
            holders.append(asyncio.create_task(run_chat(url, None, hold_s=4.0)))
            await asyncio.sleep(0.7)
        return await asyncio.gather(*holders)

    results = asyncio.run(sessions())
    started = [r.event("session.started") or {"error": r.errors, "close": r.close_code} for r in results]
    replicas = {s.get("replica"): s.get("gpu_ids") for s in started}
    report = {
        "cluster_gpus": ray.cluster_resources().get("GPU"),
        "replica_gpu_ids": replicas,
        "sessions": [{k: s.get(k) for k in ("replica", "gpu_ids", "slot", "error", "close")} for s in started],
    }
    serve.shutdown()
    ray.shutdown()
    return report


if __name__ == "__main__":
    started = time.monotonic()
    out = main(sys.argv[1])
    out["seconds"] = round(time.monotonic() - started, 1)
    print("SCALING_REPORT " + json.dumps(out))
