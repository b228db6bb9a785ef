"""Per-frame round trip through Ray Serve: N concurrent moshi-protocol sessions streaming in real time.

    serve run serve_config.cpu.yaml &          # or the GPU profile
    python scripts/rtt_probe.py --sessions 1 --sessions 4

Round trip = send of input frame k -> arrival of the output frame produced for it, as a client sees it
(includes Opus/Ogg paging on both sides, the Serve proxy, the replica's loop and the model tick).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bizra_voice.chat_client import chat_url, run_chat  # noqa: E402
from bizra_voice.constants import SAMPLE_RATE  # noqa: E402


def load_pcm(path: str | None, seconds: float) -> np.ndarray:
    if path:
        import sphn

        pcm, sr = sphn.read(path)
        pcm = np.asarray(pcm[0], dtype=np.float32)
        if sr != SAMPLE_RATE:
            pcm = sphn.resample(pcm, src_sample_rate=sr, dst_sample_rate=SAMPLE_RATE)
        reps = int(np.ceil(seconds * SAMPLE_RATE / pcm.size))
        return np.tile(pcm, reps)[: int(seconds * SAMPLE_RATE)]
    rng = np.random.default_rng(0)
    return (0.05 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


async def probe(url: str, sessions: int, pcm: np.ndarray) -> dict:
    results = await asyncio.gather(*(run_chat(url, pcm) for _ in range(sessions)))
    rtts = np.concatenate([r.round_trips_ms() for r in results])
    return {
        "sessions": sessions,
        "handshakes": sum(r.handshake_s is not None for r in results),
        "errors": [e for r in results for e in r.errors],
        "frames_sent": sum(r.frames_sent for r in results),
        "frames_received": sum(r.frames_received for r in results),
        "rtt_ms_p50": round(float(np.percentile(rtts, 50)), 1) if rtts.size else None,
        "rtt_ms_p99": round(float(np.percentile(rtts, 99)), 1) if rtts.size else None,
        "handshake_s_max": round(max((r.handshake_s or 0.0) for r in results), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--sessions", type=int, action="append", help="concurrent sessions (repeatable)")
    ap.add_argument("--seconds", type=float, default=10.0, help="audio streamed per session")
    ap.add_argument("--wav", default=None, help="speech to stream (default: low noise)")
    args = ap.parse_args()
    pcm = load_pcm(args.wav, args.seconds)
    url = chat_url(args.url, greedy=1)
    for n in args.sessions or [1, 4]:
        print(json.dumps(asyncio.run(probe(url, n, pcm))), flush=True)


if __name__ == "__main__":
    main()
