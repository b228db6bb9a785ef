"""CPU cost of one session on the engine replica, per transport: /v1/realtime over a WebSocket vs WebRTC.

    serve run serve_config.cpu.yaml &            # or any running BIZRA Voice
    python scripts/bench_transports.py --url http://127.0.0.1:8000 --seconds 20 --out docs/bench

For each transport in turn, one session streams the shared speech file (looped) in real time and, once the
model's audio flows back, for ``--seconds`` this script samples the CPU time of the VoiceServer replica processes on this machine
(psutil): the replica's engine tick is the same work either way, so the difference between the two is the
transport's own cost (base64 PCM16 JSON events vs Opus decode/encode, SRTP and the data channel). An idle
window first gives the replica's baseline. Sessions are opened one after another, never together.
Prints and writes JSON (``--out``): CPU seconds per second of session, per transport, and minus idle.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _bench_common import provenance, write_json  # noqa: E402

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "audio" / "user_turn_en.wav"
SETUP_TIMEOUT_S = 120.0  # a session opening on a busy machine (the window is measured once audio flows)


def replica_processes():
    import psutil

    found = [p for p in psutil.process_iter(["cmdline"])
             if any("ServeReplica" in part and "VoiceServer" in part for part in (p.info["cmdline"] or []))]
    if not found:
        raise SystemExit("no VoiceServer replica process on this machine (run the server here first)")
    return found


def cpu_seconds(processes) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def speech_at(rate: int) -> np.ndarray:
    import wave

    import soxr

    with wave.open(str(SPEECH), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
        pcm = pcm.reshape(-1, w.getnchannels()).mean(axis=1)
        source = w.getframerate()
    return soxr.resample(pcm, source, rate).astype(np.float32)


async def cpu_per_second(processes, seconds: float) -> float:
    """CPU seconds per second of the replicas over the next ``seconds``."""
    start_cpu, start = cpu_seconds(processes), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_seconds(processes) - start_cpu) / (time.monotonic() - start)


async def until(predicate, what: str, timeout_s: float = SETUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} within {timeout_s:g} s")
        await asyncio.sleep(0.05)


async def websocket_session(url: str, measure) -> float:
    """One /v1/realtime session streaming speech; ``measure()`` runs once the model's audio flows back."""
    import websockets

    pcm, chunk, deltas = speech_at(24_000), 1920, [0]
    async with websockets.connect(url.replace("http", "ws", 1) + "/v1/realtime", compression=None,
                                  max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "mode": "standalone"}}))

        async def read() -> None:
            async for message in ws:
                if '"response.output_audio.delta"' in message:
                    deltas[0] += 1

        async def stream() -> None:
            start = time.monotonic()
            for k in range(0, 10**9, chunk):
                data = (np.clip(np.resize(pcm, k + chunk)[k:k + chunk], -1, 1) * 32767).astype("<i2").tobytes()
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(data).decode()}))
                await asyncio.sleep(max(0.0, start + (k + chunk) / 24_000 - time.monotonic()))

        tasks = [asyncio.create_task(read()), asyncio.create_task(stream())]
        try:
            await until(lambda: deltas[0] > 0, "no audio came back over the WebSocket")
            return await measure()
        finally:
            for task in tasks:
                task.cancel()


def speech_track():
    """The user's microphone for the WebRTC peer: the speech file, looped, in real-time 20 ms frames."""
    import fractions

    from aiortc.mediastreams import MediaStreamTrack

    class Speech(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.pcm, self.pts, self.start = speech_at(48_000), 0, None

        async def recv(self):
            import av

            self.start = self.start or time.monotonic()
            await asyncio.sleep(max(0.0, self.start + self.pts / 48_000 - time.monotonic()))
            chunk = np.resize(self.pcm, self.pts + 960)[self.pts:self.pts + 960]
            frame = av.AudioFrame.from_ndarray((chunk * 32767).astype(np.int16).reshape(1, -1), format="s16",
                                               layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48_000, self.pts, fractions.Fraction(1, 48_000)
            self.pts += 960
            return frame

    return Speech()


async def webrtc_session(url: str, measure) -> float:
    """One WebRTC call streaming speech on its track; ``measure()`` runs once the model's audio flows back."""
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from openai import AsyncOpenAI

    pc = RTCPeerConnection()
    pc.createDataChannel("oai-events")
    pc.addTrack(speech_track())
    heard: list[int] = [0]
    readers: list[asyncio.Task] = []

    async def listen(track) -> None:
        while True:
            await track.recv()
            heard[0] += 1

    pc.on("track", lambda track: readers.append(asyncio.ensure_future(listen(track))))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        answer = await AsyncOpenAI(api_key="unused", base_url=url + "/v1").realtime.calls.create(
            sdp=pc.localDescription.sdp, session={"type": "realtime", "mode": "standalone"})
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.text, type="answer"))
        await until(lambda: heard[0] > 0, "no audio came back over the WebRTC call")
        return await measure()
    finally:
        for reader in readers:
            reader.cancel()
        await pc.close()


async def main(args: argparse.Namespace) -> dict:
    processes = replica_processes()
    idle = await cpu_per_second(processes, min(args.seconds, 10.0))
    results = {"idle": idle}
    for name, session in (("websocket", websocket_session), ("webrtc", webrtc_session)):
        await asyncio.sleep(3.0)  # the previous session's slot is released
        results[name] = await session(args.url, lambda: cpu_per_second(processes, args.seconds))
    return {
        "cpu_s_per_s": {k: round(v, 4) for k, v in results.items()},
        "cpu_s_per_s_minus_idle": {k: round(results[k] - idle, 4) for k in ("websocket", "webrtc")},
        "webrtc_over_websocket": round((results["webrtc"] - idle) / max(1e-9, results["websocket"] - idle), 3),
        "seconds": args.seconds, "url": args.url,
    }


def run(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args(argv)
    report = {**asyncio.run(main(options)), "provenance": provenance()}
    print(json.dumps(report, indent=2))
    if options.out is not None:
        write_json(options.out / "transports_cpu.json", report)
    return report


if __name__ == "__main__":
    run()
