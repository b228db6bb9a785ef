"""Soak test: N sessions streaming speech in real time for M minutes; reports replica memory growth and
leaked slots (both read from /api/health).

    python scripts/soak.py --url http://127.0.0.1:8000 --sessions 4 --minutes 30 [--token T] \
        [--out docs/bench/soak_cpu.json]   # + docs/bench/soak_cpu.png: RSS, tick p99 and slots over time

Each session streams the bundled speech WAV (or noise) in a loop, is closed and reopened every
``--session-s`` seconds (so slots are claimed and released many times), and must see no 0x05 errors.
At the end every slot must be free again. Exit status 0 = no errors, no leaked slot, growth under
``--max-growth-mb``. ``run_soak`` is importable (the CI runs a short version through tests/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bizra_voice.chat_client import chat_url, run_chat  # noqa: E402
from bizra_voice.constants import FRAME_SIZE, SAMPLE_RATE  # noqa: E402

WAV = Path(__file__).resolve().parents[2] / "shared" / "audio" / "user_turn_en.wav"


@dataclass
class SoakReport:
    sessions_run: int = 0
    errors: list[str] = field(default_factory=list)
    capacity_retries: int = 0  # 1013 answers: a slot was still being released; retried, not an error
    frames_sent: int = 0
    frames_received: int = 0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MB)
    engine: list[dict] = field(default_factory=list)  # /api/health "engine" samples, with "t" (seconds)
    slots_total: int = 0
    slots_free_end: int = 0
    seconds: float = 0.0

    @property
    def leaked_slots(self) -> int:
        return self.slots_total - self.slots_free_end

    @property
    def growth_mb(self) -> float:
        """RSS growth after warm-up: the mean of the last quarter of samples minus the first quarter's."""
        values = [mb for _, mb in self.rss_mb]
        if len(values) < 4:
            return values[-1] - values[0] if len(values) >= 2 else 0.0
        q = max(1, len(values) // 4)
        return float(np.mean(values[-q:]) - np.mean(values[:q]))

    def summary(self) -> dict:
        return {"seconds": round(self.seconds, 1), "sessions_run": self.sessions_run, "errors": len(self.errors),
                "first_errors": self.errors[:3],
                "capacity_retries": self.capacity_retries, "frames_sent": self.frames_sent,
                "frames_received": self.frames_received,
                "rss_mb_start": self.rss_mb[0][1] if self.rss_mb else None,
                "rss_mb_end": self.rss_mb[-1][1] if self.rss_mb else None,
                "rss_mb_peak": max((mb for _, mb in self.rss_mb), default=None),
                "growth_mb": round(self.growth_mb, 1), "slots_total": self.slots_total,
                "leaked_slots": self.leaked_slots}


def _speech() -> np.ndarray:
    if WAV.exists():
        import sphn

        pcm, _ = sphn.read(str(WAV))
        return np.asarray(pcm[0], np.float32)
    return (0.05 * np.random.default_rng(0).standard_normal(8 * SAMPLE_RATE)).astype(np.float32)


def _health(base: str, token: str | None) -> dict:
    query = "?" + urllib.parse.urlencode({"token": token}) if token else ""
    with urllib.request.urlopen(f"{base}/api/health{query}", timeout=10) as resp:
        return json.loads(resp.read())


async def run_soak(base: str, sessions: int, seconds: float, *, session_s: float = 20.0,
                   token: str | None = None, sample_s: float = 5.0) -> SoakReport:
    report = SoakReport()
    speech = _speech()
    loop_pcm = np.tile(speech, int(np.ceil(session_s * SAMPLE_RATE / speech.size)) + 1)[: int(session_s * SAMPLE_RATE)]
    loop_pcm = loop_pcm[: loop_pcm.size // FRAME_SIZE * FRAME_SIZE]
    deadline = time.monotonic() + seconds
    start = time.monotonic()

    async def worker(k: int) -> None:
        await asyncio.sleep(k * 0.5)
        while time.monotonic() < deadline:
            left = deadline - time.monotonic()
            pcm = loop_pcm[: max(FRAME_SIZE, int(min(session_s, left) * SAMPLE_RATE) // FRAME_SIZE * FRAME_SIZE)]
            url = chat_url(base, token=token, seed=k)
            try:
                result = await run_chat(url, pcm, drain_s=0.5, handshake_timeout_s=60)
            except Exception as exc:  # connection-level failure counts as an error
                report.errors.append(f"session {k}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)
                continue
            if result.close_code == 1013 and result.handshake_s is None:
                report.capacity_retries += 1
                await asyncio.sleep(0.5)
                continue
            report.sessions_run += 1
            report.frames_sent += result.frames_sent
            report.frames_received += result.frames_received
            report.errors.extend(f"session {k}: {e}" for e in result.errors)
            if result.close_code not in (1000, None):
                report.errors.append(f"session {k}: close {result.close_code}")

    async def sampler() -> None:
        while time.monotonic() < deadline:
            health = await asyncio.to_thread(_health, base, token)
            t = time.monotonic() - start
            report.rss_mb.append((t, float(health.get("process", {}).get("rss_mb", 0.0))))
            report.engine.append({"t": round(t, 1), **health.get("engine", {})})
            await asyncio.sleep(sample_s)

    await asyncio.gather(sampler(), *(worker(k) for k in range(sessions)))
    end = time.monotonic() + 15
    while True:
        health = await asyncio.to_thread(_health, base, token)
        report.slots_total, report.slots_free_end = health["slots"]["total"], health["slots"]["free"]
        if report.leaked_slots == 0 or time.monotonic() > end:
            break
        await asyncio.sleep(0.5)
    report.rss_mb.append((time.monotonic() - start, float(health.get("process", {}).get("rss_mb", 0.0))))
    report.seconds = time.monotonic() - start
    return report


def write_outputs(report: SoakReport, out: Path, args: argparse.Namespace) -> None:
    """JSON (summary, settings, provenance, the sampled series) and a PNG of memory, tick p99 and slots."""
    from _bench_common import provenance, pyplot, write_json

    write_json(out, {"summary": report.summary(), "provenance": provenance(),
                     "settings": {"url": args.url, "sessions": args.sessions, "minutes": args.minutes,
                                  "session_s": args.session_s},
                     "rss_mb": [[round(t, 1), mb] for t, mb in report.rss_mb], "engine": report.engine})
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    minutes = [t / 60 for t, _ in report.rss_mb]
    axes[0].plot(minutes, [mb for _, mb in report.rss_mb])
    axes[0].set_ylabel("replica RSS (MB)")
    eng_minutes = [e["t"] / 60 for e in report.engine]
    axes[1].plot(eng_minutes, [e.get("tick_ms_p50") for e in report.engine], label="p50")
    axes[1].plot(eng_minutes, [e.get("tick_ms_p99") for e in report.engine], label="p99")
    axes[1].axhline(80, color="grey", linestyle=":", label="80 ms frame")
    axes[1].set_ylabel("tick (ms)")
    axes[1].legend(loc="upper right")
    axes[2].step(eng_minutes, [e.get("slots_used") for e in report.engine], where="post")
    axes[2].set_ylabel("slots in use")
    axes[2].set_xlabel("minutes")
    s = report.summary()
    fig.suptitle(f"soak: {args.sessions} sessions x {args.minutes:g} min, {s['sessions_run']} sessions run, "
                 f"{s['errors']} errors, {s['leaked_slots']} leaked slots, RSS growth {s['growth_mb']} MB",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--session-s", type=float, default=20.0)
    parser.add_argument("--token")
    parser.add_argument("--max-growth-mb", type=float, default=200.0)
    parser.add_argument("--out", type=Path, help="write the report here as JSON, and a PNG plot beside it")
    args = parser.parse_args(argv)
    report = asyncio.run(run_soak(args.url, args.sessions, args.minutes * 60, session_s=args.session_s,
                                  token=args.token, sample_s=min(30.0, max(2.0, args.minutes * 2))))
    print(json.dumps(report.summary(), indent=2))
    if args.out is not None:
        write_outputs(report, args.out, args)
    ok = not report.errors and report.leaked_slots == 0 and report.growth_mb < args.max_growth_mb
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
