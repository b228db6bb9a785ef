"""The real-time run: N sessions through the real ``EngineRuntime`` tick thread, fed on schedule.

Each session is an asyncio task that opens a session (the product's handshake: prepare + prefill on the
tick thread), pushes one 80 ms frame of speech-like audio every 80 ms of wall time (absolute schedule, so a
slow engine cannot slow the sender down) and reads its output frames as they come. No Ray, no sockets: this
measures the engine and its tick thread, which is what decides capacity.

Sessions join staggered, and every session re-anchors its persona once during the run (the context window
is shortened through ``engine.reanchor_margin``, so the re-anchor that a real session meets after ~4 minutes
comes after 60 % of the run): the worst tick and the worst frame latency during joins and re-anchors are
reported apart from the steady state, because prefills run on the tick thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bizra_voice import constants as C
from bizra_voice.engine.api import (
    AtCapacity,
    EndCause,
    EngineError,
    SamplingParams,
    SessionClosed,
    SessionSpec,
)
from bizra_voice.engine.capacity import percentile
from bizra_voice.gpucheck.speech import frames_of, speech_like

FRAME_S = C.FRAME_MS / 1000
JOIN_TAIL_S = 0.3  # frames this long after a handshake completes still count as "during a join"
# Before / after a re-anchor was seen: the runtime prefills it in steps between ticks and counts it when done.
REANCHOR_WINDOW_S = (0.8, 0.3)
DRAIN_S = 3.0  # how long a session waits for its last output frames after its last input
REANCHOR_AT = 0.6  # fraction of a session's frames after which it re-anchors (once per run)
REANCHOR_KEEP = 0.1  # fraction of a session's frames replayed after the persona at a re-anchor


@dataclass
class SessionTrace:
    """What one session saw; times are ``time.monotonic()`` seconds."""

    index: int
    open_t: float = 0.0
    ready_t: float | None = None
    prefill_ms: float | None = None
    refused: str | None = None
    error: str | None = None
    push_t: list[float] = field(default_factory=list)
    recv: list[tuple[float, int, float, int]] = field(default_factory=list)  # (time, frame, tick ms, dropped)
    reanchor_t: list[float] = field(default_factory=list)
    dropped: int = 0
    reanchors: int = 0
    end_cause: str | None = None  # set when the server ended the session
    end_reason: str | None = None


def reanchor_settings(context: int, prompt_frames: int, frames: int) -> dict[str, int]:
    """``engine.reanchor_margin`` / ``reanchor_history`` that make each session re-anchor once, after
    ``REANCHOR_AT`` of its ``frames`` (the replayed history keeps the next re-anchor past the run's end)."""
    after = max(4, int(REANCHOR_AT * frames))
    margin = context - prompt_frames - after
    history = max(1, int(REANCHOR_KEEP * frames))
    if margin < 16:  # the context cannot be shortened that far: no forced re-anchor
        return {"reanchor_margin": 256, "reanchor_history": 250}
    return {"reanchor_margin": margin, "reanchor_history": history}


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _read(session: Any, trace: SessionTrace) -> None:
    seen = 0
    while True:
        try:
            out = await session.next_output()
        except SessionClosed as exc:
            if exc.cause is not EndCause.CLIENT:
                trace.end_cause, trace.end_reason = exc.cause.value, str(exc)
            return
        now = time.monotonic()
        trace.recv.append((now, out.frame, float(out.tick_ms), int(session.input_frames_dropped)))
        if session.reanchors > seen:
            seen = session.reanchors
            trace.reanchor_t.append(now)


async def _session(runtime: Any, trace: SessionTrace, start_at: float, audio: np.ndarray, voice: str) -> None:
    await _sleep_until(start_at)
    trace.open_t = time.monotonic()
    try:
        session = await runtime.open_session(SessionSpec(voice=voice, sampling=SamplingParams(seed=1000 + trace.index)))
    except AtCapacity as exc:
        trace.refused = str(exc)
        return
    except EngineError as exc:
        trace.error = f"{type(exc).__name__}: {exc}"
        return
    trace.ready_t = time.monotonic()
    trace.prefill_ms = session.prefill_ms
    reader = asyncio.create_task(_read(session, trace))
    try:
        for k in range(audio.shape[0]):
            await _sleep_until(trace.ready_t + k * FRAME_S)
            try:
                session.push_pcm(audio[k])
            except SessionClosed:
                break
            trace.push_t.append(time.monotonic())
        deadline = time.monotonic() + DRAIN_S
        while (not session.closed and time.monotonic() < deadline
               and len(trace.recv) + session.input_frames_dropped < len(trace.push_t)):
            await asyncio.sleep(0.02)
        trace.dropped = session.input_frames_dropped
        trace.reanchors = session.reanchors
        if session.closed and session.close_cause not in (None, EndCause.CLIENT):
            trace.end_cause = session.close_cause.value
            trace.end_reason = session.close_reason
    finally:
        await session.close()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def drive(runtime: Any, sessions: int, frames: int, stagger_s: float, voice: str,
                clips: list[np.ndarray]) -> list[SessionTrace]:
    """Run ``sessions`` sessions of ``frames`` input frames each, joining ``stagger_s`` apart."""
    traces = [SessionTrace(i) for i in range(sessions)]
    t0 = time.monotonic() + 0.05
    await asyncio.gather(*(
        _session(runtime, traces[i], t0 + i * stagger_s, frames_of(clips[i % len(clips)], frames, 17 * i), voice)
        for i in range(sessions)))
    return traces


def _windows(traces: list[SessionTrace]) -> list[tuple[float, float]]:
    spans = [(t.open_t, t.ready_t + JOIN_TAIL_S) for t in traces if t.ready_t is not None]
    spans += [(r - REANCHOR_WINDOW_S[0], r + REANCHOR_WINDOW_S[1]) for t in traces for r in t.reanchor_t]
    return spans


def _stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    return {"count": len(values), "p50": round(percentile(values, 0.5), 2), "p99": round(percentile(values, 0.99), 2),
            "max": round(max(values), 2)}


def _percentiles(values: list[float]) -> list[float]:
    if not values:
        return []
    return [round(float(v), 2) for v in np.percentile(np.asarray(values), np.arange(101))]


def analyze(traces: list[SessionTrace], budget_ms: float = C.FRAME_MS) -> dict[str, Any]:
    """Per-frame latency (push of an input frame -> its output frame), split into steady state and the
    windows around joins and re-anchors; drops, refusals and server ends. Pure: unit-tested."""
    windows = _windows(traces)

    def in_event(t: float) -> bool:
        return any(a <= t <= b for a, b in windows)

    steady: list[float] = []
    during: list[float] = []
    event_ticks: list[float] = []
    ticks: list[float] = []
    for trace in traces:
        for recv_t, frame, tick_ms, dropped in trace.recv:
            ticks.append(tick_ms)
            index = frame + dropped  # the runtime drops the oldest queued frames: later outputs shift by that
            if index >= len(trace.push_t):
                continue
            latency = (recv_t - trace.push_t[index]) * 1000
            if in_event(recv_t):
                during.append(latency)
                event_ticks.append(tick_ms)
            else:
                steady.append(latency)
    ended: dict[str, int] = {}
    for trace in traces:
        if trace.end_cause:
            ended[trace.end_cause] = ended.get(trace.end_cause, 0) + 1
    prefills = [t.prefill_ms for t in traces if t.prefill_ms is not None]
    return {
        "sessions": len(traces),
        "opened": sum(t.ready_t is not None for t in traces),
        "refused": sum(t.refused is not None for t in traces),
        "refusals": sorted({t.refused for t in traces if t.refused})[:3],
        "errors": sorted({t.error for t in traces if t.error})[:3],
        "frames_sent": sum(len(t.push_t) for t in traces),
        "frames_received": sum(len(t.recv) for t in traces),
        "frames_dropped": sum(t.dropped for t in traces),
        "sessions_ended_by_server": ended,
        "end_reasons": sorted({t.end_reason for t in traces if t.end_reason})[:3],
        "reanchors": sum(t.reanchors for t in traces),
        "latency_ms": _stats(steady + during),
        "steady_latency_ms": _stats(steady),
        "event_latency_ms": _stats(during),
        "steady_late_frames": sum(v > budget_ms for v in steady),
        "late_frames": sum(v > budget_ms for v in steady + during),
        "worst_tick_during_events_ms": round(max(event_ticks), 2) if event_ticks else None,
        "worst_tick_ms": round(max(ticks), 2) if ticks else None,
        "join_prefill_ms": _stats(prefills),
        "latency_percentiles_ms": _percentiles(steady + during),  # 0..100 (the plot's CDF)
    }


def run_level(loaded: Any, sessions: int, seconds: float, progress: Any) -> dict[str, Any]:
    """One level: a runtime of ``sessions`` slots (``EngineRuntime.start``: the product's sizing check for an
    explicit count), ``sessions`` sessions for ``seconds`` each. Never raises for capacity or memory."""
    from bizra_voice.engine.batched import BatchedEngine
    from bizra_voice.engine.capacity import CapacityError
    from bizra_voice.engine.config import EngineConfig
    from bizra_voice.engine.runtime import EngineRuntime, LoadedModels
    from bizra_voice.gpucheck.timing import is_out_of_memory, recover

    bundle = loaded.bundle
    config = loaded.config
    frames = max(4, int(round(seconds / FRAME_S)))
    prompt_frames = loaded.prepare(SessionSpec(voice=config.default_voice)).length
    settings = reanchor_settings(bundle.context, prompt_frames, frames)
    config = EngineConfig.model_validate({**config.model_dump(), "slots": sessions, **settings})
    stagger_s = min(0.25, 0.15 * seconds / sessions)
    level: dict[str, Any] = {"sessions": sessions, "seconds": seconds, "frames_per_session": frames,
                             "stagger_s": round(stagger_s, 3), "prompt_frames": prompt_frames,
                             "forced_reanchor_after_frames": int(REANCHOR_AT * frames), **settings}
    cuda = bundle.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(bundle.device)
    models = LoadedModels(bundle, loaded.library, config)
    try:
        runtime = EngineRuntime.start(models)
    except CapacityError as exc:
        return {**level, "error": str(exc), "fits_memory": False}
    except ImportError as exc:  # the runtime's sizing measures Opus serving work (sphn)
        return {**level, "error": f"the runtime could not start here: {exc}"}
    except Exception as exc:
        recover(bundle)
        if not is_out_of_memory(exc):
            raise
        # EngineRuntime.start's sizing probes batches of 1 and 2 even for fewer slots: where two do not fit,
        # the product cannot start this replica. Say so, then serve the engine built directly.
        level["start_error"] = ("EngineRuntime.start ran out of memory in its sizing probes (B=1 and B=2): "
                                f"the product could not start this replica ({str(exc)[:160]})")
        progress.log(f"  {level['start_error']}; building the {sessions}-slot engine directly")
        try:
            engine = BatchedEngine(bundle, sessions)
        except Exception as again:
            recover(bundle)
            if is_out_of_memory(again):
                return {**level, "error": f"out of memory building a {sessions}-slot engine", "fits_memory": False}
            raise
        engine.keep_history(config.reanchor_history, config.reanchor_margin)
        runtime = EngineRuntime(engine, models)
    clips = [speech_like(min(20.0, seconds + 2), seed=200 + i, pitch=95.0 + 20 * i) for i in range(4)]
    try:
        progress.log(f"  {sessions} sessions x {seconds:g} s (joins {stagger_s * 1000:.0f} ms apart, one re-anchor "
                     f"each after {int(REANCHOR_AT * frames)} frames)")
        before = runtime.stats()
        seen = runtime.ticks
        traces = asyncio.run(drive(runtime, sessions, frames, stagger_s, config.default_voice, clips))
        after = runtime.stats()
        _, tick_ms = runtime.tick_times_since(seen)
    finally:
        runtime.shutdown()
        runtime.engine.close()
        del runtime
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    level.update(analyze(traces))
    level["ran"] = True
    level["fits_memory"] = True
    level["ticks"] = after["ticks"] - before["ticks"]
    level["deadline_misses"] = after["deadline_misses"] - before["deadline_misses"]
    level["tick_ms"] = _stats(tick_ms)
    level["runtime_input_frames_dropped"] = after["input_frames_dropped"] - before["input_frames_dropped"]
    level["prefill_steps"] = after.get("prefill_steps", 0) - before.get("prefill_steps", 0)
    level["prefill_step_ms_max"] = after.get("prefill_step_ms_max")  # the runtime's own maximum, since start
    if cuda:
        level["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(bundle.device))
        level["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(bundle.device))
    return level
