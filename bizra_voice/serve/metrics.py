"""Prometheus metrics through ``ray.serve.metrics`` (exported on each Ray node's metrics endpoint).

Ray prefixes every name with ``ray_`` and adds the ``deployment``, ``replica`` and ``application`` tags.
The engine's tick thread is not an asyncio task, so ``MetricsPump`` (a small daemon thread per VoiceServer
replica) copies the runtime's tick durations, deadline misses and slot use into the metrics once a second.
Everything else is recorded where it happens (session handlers, ModeRouter, QwenKnowledge, Transcriber).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from bizra_voice import constants as C

log = logging.getLogger("ray.serve")

TICK_BUCKETS_MS = [2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, float(C.FRAME_MS), 100.0, 160.0]
LATENCY_BUCKETS_MS = [10.0, 25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0, 6400.0, 12800.0]


def _serve_metrics():
    from ray.serve import metrics

    return metrics


class VoiceMetrics:
    """The VoiceServer replica's metrics (create inside the replica)."""

    def __init__(self) -> None:
        m = _serve_metrics()
        self.tick_ms = m.Histogram("bizra_engine_tick_ms", description="Duration of one batched engine tick "
                                   f"(ms; the real-time budget is {C.FRAME_MS} ms).", boundaries=TICK_BUCKETS_MS)
        self.deadline_misses = m.Counter("bizra_engine_deadline_misses",
                                         description=f"Engine ticks that took longer than {C.FRAME_MS} ms.")
        self.sessions_active = m.Gauge("bizra_sessions_active", description="Sessions holding an engine slot.")
        self.slots_total = m.Gauge("bizra_slots_total", description="Engine slots of the replica.")
        self.sessions_started = m.Counter("bizra_sessions_started", description="Sessions that got a slot.",
                                          tag_keys=("endpoint",))
        self.sessions_rejected = m.Counter("bizra_sessions_rejected", description="Sessions refused (capacity "
                                           "or a bad request).", tag_keys=("endpoint", "reason"))
        self.handshake_ms = m.Histogram("bizra_handshake_ms", description="WebSocket accept -> session ready "
                                        "(prompt prefilled) in ms.", boundaries=LATENCY_BUCKETS_MS,
                                        tag_keys=("endpoint",))
        self.first_audio_ms = m.Histogram("bizra_time_to_first_audio_ms", description="WebSocket accept -> "
                                          "first assistant audio sent (ms).", boundaries=LATENCY_BUCKETS_MS,
                                          tag_keys=("endpoint",))
        self.recordings = m.Counter("bizra_recordings_started", description="Sessions recorded (consent given "
                                    "and recording enabled).")
        self.input_frames_dropped = m.Counter("bizra_input_frames_dropped", description="User input frames "
                                              "dropped so a session that fell behind could catch up.",
                                              tag_keys=("endpoint",))
        self.sessions_ended = m.Counter("bizra_sessions_ended_by_server", description="Sessions the engine "
                                        "ended, by cause (fell_behind, output_not_read, engine_error, ...).",
                                        tag_keys=("cause",))
        self.admitting = m.Gauge("bizra_admitting", description="1 while the replica admits new sessions (free "
                                 "slots and its recent p99 tick within budget), else 0.")

    def rejected(self, endpoint: str, reason: str) -> None:
        self.sessions_rejected.inc(1, tags={"endpoint": endpoint, "reason": reason})

    def started(self, endpoint: str, handshake_ms: float) -> None:
        self.sessions_started.inc(1, tags={"endpoint": endpoint})
        self.handshake_ms.observe(handshake_ms, tags={"endpoint": endpoint})

    def first_audio(self, endpoint: str, ms: float) -> None:
        self.first_audio_ms.observe(ms, tags={"endpoint": endpoint})


class MetricsPump:
    """Copies the runtime's tick-thread statistics into ``VoiceMetrics`` every ``interval_s``."""

    def __init__(self, runtime: Any, metrics: VoiceMetrics, interval_s: float = 1.0) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.interval_s = interval_s
        self._ticks_seen = 0
        self._misses_seen = 0
        self._ends_seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bizra-metrics", daemon=True)

    def start(self) -> MetricsPump:
        self.metrics.slots_total.set(self.runtime.capacity)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def pump_once(self) -> int:
        """Record what happened since the last call; returns how many tick durations were observed."""
        ticks, values = self.runtime.tick_times_since(self._ticks_seen)
        self._ticks_seen = ticks
        for ms in values:
            self.metrics.tick_ms.observe(ms)
        misses = self.runtime.deadline_misses
        if misses > self._misses_seen:
            self.metrics.deadline_misses.inc(misses - self._misses_seen)
            self._misses_seen = misses
        self.metrics.sessions_active.set(self.runtime.active_sessions)
        self.metrics.admitting.set(1 if self.runtime.admission_refusal() is None else 0)
        for cause, count in dict(self.runtime.sessions_ended).items():
            seen = self._ends_seen.get(cause, 0)
            if count > seen:
                self.metrics.sessions_ended.inc(count - seen, tags={"cause": cause})
                self._ends_seen[cause] = count
        return len(values)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.pump_once()
            except Exception:  # metrics must never take the replica down
                log.exception("metrics pump failed")


def router_decisions_counter():
    """ModeRouter: every decision, by scope (session | turn) and outcome (standalone | hybrid)."""
    return _serve_metrics().Counter("bizra_router_decisions", description="Mode router decisions by outcome.",
                                    tag_keys=("scope", "mode"))


def latency_histogram(name: str, description: str):
    """A millisecond latency histogram (Qwen first token / whole answer, Transcriber)."""
    return _serve_metrics().Histogram(name, description=description, boundaries=LATENCY_BUCKETS_MS)
