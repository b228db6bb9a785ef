"""WebSocket load generator for any moshi-protocol server: N concurrent sessions streaming real speech.

    python scripts/bench_sessions.py --url ws://127.0.0.1:8000/api/chat --sessions 1,2,4,8
    python scripts/bench_sessions.py --quick            # CI: 1 session, 1.5 s of audio

Each session connects (``compression=None``), waits for the 0x00 handshake, then sends the WAV as Ogg/Opus
(``sphn.OpusStreamWriter``), one 80 ms frame every 80 ms of wall time, and decodes what comes back with
``sphn.OpusStreamReader``.

Correspondence of frames: output frame j is the j-th complete 80 ms (1920 samples) of decoded reply audio.
A server answers every input frame except the first ``lag`` ones (stock moshi ``LMGen`` answers nothing to
its first frame, ours answers from the first), so lag = frames sent - frames received after the drain, and
output j is paired with input j + lag: the frame whose arrival at the server produced it.
Round trip_j = arrival of output j - send of input j + lag (both on this client's clock, so it includes
Opus/Ogg on both sides, the network stack and the server). A frame misses its deadline when its round trip
exceeds 80 ms: the reply came after the next input frame was due. A load level is *real time* when every
session got its handshake within ``--handshake-budget-ms``, >= 95 % of its frames back (not counting
up to 2 frames of start-up lag), and in steady state (each session's first 2 answered frames excluded:
the reference servers answer nothing at all to their first 1-2 frames; those frames are reported as time
to first audio) p99 round trip <= 80 ms and <= 1 % of frames late. All-frame figures are reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _bench_common import BUDGET_MS, percentiles, provenance, pyplot, save_plot, write_json  # noqa: E402

SAMPLE_RATE = 24000
FRAME = 1920
STARTUP_LAG = 2  # frames a server may leave unanswered at the start (stock LMGen: 1, the PersonaPlex reference: 2)
DEFAULT_WAV = Path(__file__).resolve().parents[2] / "shared" / "audio" / "user_turn_en.wav"


def load_speech(path: Path, seconds: float | None) -> np.ndarray:
    """Mono float32 at 24 kHz, cut to ``seconds`` and to whole 80 ms frames."""
    import sphn

    pcm, rate = sphn.read(str(path))
    pcm = np.asarray(pcm, dtype=np.float32)
    pcm = pcm[0] if pcm.ndim == 2 else pcm
    if rate != SAMPLE_RATE:
        pcm = np.asarray(sphn.resample(pcm, src_sample_rate=rate, dst_sample_rate=SAMPLE_RATE), dtype=np.float32)
    if seconds:
        pcm = pcm[: int(seconds * SAMPLE_RATE)]
    return pcm[: len(pcm) // FRAME * FRAME]


@dataclass
class SessionResult:
    """What one client saw; times are ``time.monotonic()`` seconds."""

    index: int
    connect_t: float = 0.0
    handshake_t: float | None = None
    send_t: list[float] = field(default_factory=list)
    recv_t: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    text_pieces: int = 0

    @property
    def lag(self) -> int:
        return max(0, len(self.send_t) - len(self.recv_t))

    def round_trips_ms(self) -> list[float]:
        lag = self.lag
        return [(self.recv_t[j] - self.send_t[j + lag]) * 1000 for j in range(len(self.recv_t))
                if j + lag < len(self.send_t)]

    def steady_round_trips_ms(self) -> list[float]:
        """Round trips after the first STARTUP_LAG answered frames (those are reported as time to first
        audio): the reference servers answer nothing to their first one or two frames at all."""
        return self.round_trips_ms()[STARTUP_LAG:]

    def summary(self) -> dict[str, Any]:
        rtt = self.round_trips_ms()
        first = (self.recv_t[0] - self.send_t[0]) * 1000 if self.recv_t and self.send_t else None
        return {
            "session": self.index,
            "handshake_ms": None if self.handshake_t is None else round((self.handshake_t - self.connect_t) * 1000, 1),
            "frames_sent": len(self.send_t), "frames_received": len(self.recv_t), "lag_frames": self.lag,
            "time_to_first_audio_ms": None if first is None else round(first, 1),
            "round_trip_ms": percentiles(rtt), "late_frames": int(sum(r > BUDGET_MS for r in rtt)),
            "steady_round_trip_ms": percentiles(self.steady_round_trips_ms()),
            "steady_late_frames": int(sum(r > BUDGET_MS for r in self.steady_round_trips_ms())),
            "text_pieces": self.text_pieces, "errors": self.errors[:3],
        }


async def _reader(ws: Any, res: SessionResult, handshake: asyncio.Event) -> None:
    import sphn
    import websockets

    decoder = sphn.OpusStreamReader(SAMPLE_RATE)
    samples = 0
    try:
        async for raw in ws:
            now = time.monotonic()
            if isinstance(raw, str) or not raw:
                continue
            kind, payload = raw[0], raw[1:]
            if kind == 0x00:
                res.handshake_t = now
                handshake.set()
            elif kind == 0x01:
                samples += len(decoder.append_bytes(payload))
                while samples >= (len(res.recv_t) + 1) * FRAME:
                    res.recv_t.append(now)
            elif kind == 0x02:
                res.text_pieces += 1
            elif kind == 0x05:
                res.errors.append(payload.decode("utf-8", "replace"))
    except websockets.ConnectionClosed:
        pass
    finally:
        handshake.set()


async def run_session(url: str, pcm: np.ndarray, index: int, start_at: float, handshake_timeout_s: float,
                      drain_s: float) -> SessionResult:
    """One client: connect at ``start_at``, handshake, stream in real time, drain, close."""
    import sphn
    import websockets

    res = SessionResult(index)
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    res.connect_t = time.monotonic()
    try:
        async with websockets.connect(url, compression=None, max_size=None, open_timeout=30,
                                      ping_interval=None) as ws:
            handshake = asyncio.Event()
            reader = asyncio.create_task(_reader(ws, res, handshake))
            try:
                await asyncio.wait_for(handshake.wait(), handshake_timeout_s)
            except asyncio.TimeoutError:
                res.errors.append(f"no handshake within {handshake_timeout_s:.0f} s")
            if res.handshake_t is not None:
                encoder = sphn.OpusStreamWriter(SAMPLE_RATE)
                t0 = time.monotonic()
                for k in range(len(pcm) // FRAME):
                    if reader.done():
                        break
                    await asyncio.sleep(max(0.0, t0 + k * BUDGET_MS / 1000 - time.monotonic()))
                    ogg = bytes(encoder.append_pcm(pcm[k * FRAME:(k + 1) * FRAME]))
                    res.send_t.append(time.monotonic())
                    if ogg:
                        await ws.send(b"\x01" + ogg)
                # Drain: wait until every frame is back or nothing arrived for drain_s.
                deadline = time.monotonic() + drain_s
                count = len(res.recv_t)
                while time.monotonic() < deadline and len(res.recv_t) < len(res.send_t) and not reader.done():
                    await asyncio.sleep(0.02)
                    if len(res.recv_t) != count:
                        count, deadline = len(res.recv_t), time.monotonic() + drain_s
            await ws.close()
            await asyncio.gather(reader, return_exceptions=True)
    except (OSError, websockets.WebSocketException) as exc:
        res.errors.append(f"{type(exc).__name__}: {exc}")
    return res


async def run_level(url: str, pcm: np.ndarray, sessions: int, stagger_ms: float, handshake_timeout_s: float,
                    drain_s: float) -> list[SessionResult]:
    start = time.monotonic() + 0.05
    tasks = [run_session(url, pcm, i, start + i * stagger_ms / 1000, handshake_timeout_s, drain_s)
             for i in range(sessions)]
    return list(await asyncio.gather(*tasks))


def level_summary(results: list[SessionResult], handshake_budget_ms: float) -> dict[str, Any]:
    rtt = [r for res in results for r in res.round_trips_ms()]
    steady = [r for res in results for r in res.steady_round_trips_ms()]
    per = [res.summary() for res in results]
    hs = [p["handshake_ms"] for p in per if p["handshake_ms"] is not None]
    sent = sum(p["frames_sent"] for p in per)
    received = sum(p["frames_received"] for p in per)
    late = sum(p["late_frames"] for p in per)
    steady_late = sum(p["steady_late_frames"] for p in per)
    stats, steady_stats = percentiles(rtt), percentiles(steady)
    ok = (len(hs) == len(per) and max(hs) <= handshake_budget_ms and all(
        p["frames_sent"] > 0 and p["frames_received"] >= 0.95 * (p["frames_sent"] - STARTUP_LAG) for p in per)
        and steady_stats["p99"] is not None and steady_stats["p99"] <= BUDGET_MS
        and steady_late <= 0.01 * max(1, len(steady)))
    return {
        "sessions": len(results), "round_trip_ms": stats, "late_frames": late,
        "late_fraction": round(late / len(rtt), 4) if rtt else None,
        "steady_round_trip_ms": steady_stats, "steady_late_frames": steady_late,
        "frames_sent": sent, "frames_received": received,
        "handshake_ms": percentiles(hs), "time_to_first_audio_ms": percentiles(
            [p["time_to_first_audio_ms"] for p in per if p["time_to_first_audio_ms"] is not None]),
        "lag_frames": sorted({p["lag_frames"] for p in per}), "realtime": bool(ok),
        "per_session": per, "_rtt": rtt,
    }


def realtime_sessions(levels: list[dict[str, Any]]) -> int:
    """Largest N at which the level was real time (0 if none was)."""
    return max([lvl["sessions"] for lvl in levels if lvl["realtime"]], default=0)


def plot(systems: dict[str, list[dict[str, Any]]], path_cdf: Path, path_p99: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for name, levels in systems.items():
        for lvl in levels:
            rtt = np.sort(np.asarray(lvl["_rtt"]))
            if rtt.size:
                ax.plot(rtt, np.arange(1, rtt.size + 1) / rtt.size, label=f"{name} N={lvl['sessions']}")
    ax.axvline(BUDGET_MS, color="red", linewidth=1, label="80 ms")
    save_plot(fig, ax, path_cdf, xlabel="per-frame round trip (ms)", ylabel="fraction of frames", title=title,
              legend_size=6)

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for name, levels in systems.items():
        xs = [lvl["sessions"] for lvl in levels if lvl["round_trip_ms"]["p99"] is not None]
        ys = [lvl["round_trip_ms"]["p99"] for lvl in levels if lvl["round_trip_ms"]["p99"] is not None]
        ax.plot(xs, ys, marker="o", label=f"{name} p99")
    ax.axhline(BUDGET_MS, color="red", linewidth=1, label="80 ms")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    save_plot(fig, ax, path_p99, xlabel="concurrent sessions (N)", ylabel="p99 round trip (ms)", title=title)


def with_query(url: str, params: dict[str, str]) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query)) | params
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def run_levels(url: str, pcm: np.ndarray, levels: list[int], args: argparse.Namespace,
               label: str) -> list[dict[str, Any]]:
    import os

    out = []
    for n in levels:
        load = round(os.getloadavg()[0], 2)
        results = asyncio.run(run_level(url, pcm, n, args.stagger_ms, args.handshake_timeout_s, args.drain_s))
        lvl = level_summary(results, args.handshake_budget_ms)
        lvl["load_average_1m_before"] = load
        out.append(lvl)
        r = lvl["round_trip_ms"]
        print(f"{label:8s} N={n:3d}  rtt p50 {r['p50']} p99 {r['p99']} (steady p99 "
              f"{lvl['steady_round_trip_ms']['p99']}) ms  late {lvl['late_frames']}/"
              f"{lvl['frames_received']}  handshake max {lvl['handshake_ms']['max']} ms  "
              f"real time: {lvl['realtime']}", flush=True)
        time.sleep(args.pause_s)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wav", type=Path, default=DEFAULT_WAV, help="speech to stream (any rate, mono used)")
    parser.add_argument("--seconds", type=float, default=None, help="stream only the first S seconds")
    parser.add_argument("--sessions", default="1,2,4,8", help="comma list of concurrent session counts")
    parser.add_argument("--stagger-ms", type=float, default=37.0,
                        help="spacing of session starts (clients do not arrive in the same microsecond)")
    parser.add_argument("--handshake-timeout-s", type=float, default=60.0)
    parser.add_argument("--handshake-budget-ms", type=float, default=1000.0,
                        help="a level with a slower handshake is not real time (waiting clients)")
    parser.add_argument("--drain-s", type=float, default=1.0)
    parser.add_argument("--pause-s", type=float, default=1.0, help="pause between load levels")
    parser.add_argument("--query", action="append", default=[], help="extra query param key=value")
    parser.add_argument("--out-dir", type=Path, default=Path("bench_out"))
    parser.add_argument("--quick", action="store_true", help="CI mode: 1 session, 1.5 s of audio")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8000/api/chat")
    parser.add_argument("--label", default="server", help="name of the system in the results")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.seconds, args.pause_s = "1", args.seconds or 1.5, 0.0
    pcm = load_speech(args.wav, args.seconds)
    levels = [int(n) for n in args.sessions.split(",") if n]
    url = with_query(args.url, dict(q.split("=", 1) for q in args.query))
    results = run_levels(url, pcm, levels, args, args.label)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    report = make_report({args.label: results}, args, pcm, {args.label: url})
    plot({args.label: results}, args.out_dir / "sessions_cdf.png", args.out_dir / "sessions_p99.png",
         f"{args.label}: {report['audio_seconds']} s speech per session")
    write_json(args.out_dir / "sessions.json", report)
    print(f"wrote {args.out_dir / 'sessions.json'}, sessions_cdf.png, sessions_p99.png")
    return report


def make_report(systems: dict[str, list[dict[str, Any]]], args: argparse.Namespace, pcm: np.ndarray,
                urls: dict[str, str]) -> dict[str, Any]:
    clean = {name: [{k: v for k, v in lvl.items() if k != "_rtt"} for lvl in levels]
             for name, levels in systems.items()}
    return {
        "benchmark": "sessions",
        "provenance": provenance(),
        "wav": str(args.wav), "audio_seconds": round(len(pcm) / SAMPLE_RATE, 2),
        "budget_ms": BUDGET_MS, "handshake_budget_ms": args.handshake_budget_ms, "stagger_ms": args.stagger_ms,
        "urls": urls,
        "realtime_sessions": {name: realtime_sessions(levels) for name, levels in systems.items()},
        "systems": clean,
    }


if __name__ == "__main__":
    main()
