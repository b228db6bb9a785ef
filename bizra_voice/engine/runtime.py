"""The engine's dedicated tick thread: admits sessions, ticks their frames, runs prefills between ticks.

The model runs on one thread that owns the batched state; the asyncio loop never blocks on it. Sessions
(``session.py``) push PCM and await frames; prompt prefills, re-anchors and live prompt changes are queued
to the thread and run in steps between ticks (``engine.prefill_slice_ms``), so no prefill holds the running
sessions' frames for longer than a slice.

Capacity is measured, not guessed (``engine.slots: auto``, see ``capacity.py``/``calibrate.py``), and a
session that falls behind degrades before it ends: past ``max_pending_frames`` of queued input the oldest
frames are dropped to catch up (reported to the session's ``on_input_dropped`` and counted), and only a
session that stays behind for ``behind_grace_s`` is ended (``EndCause.FELL_BEHIND``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bizra_voice import constants as C
from bizra_voice.engine.api import (
    AtCapacity,
    EndCause,
    EngineError,
    FrameOutput,
    SessionClosed,
    SessionSpec,
)
from bizra_voice.engine.capacity import SlotChoice, percentile
from bizra_voice.engine.config import EngineConfig
from bizra_voice.engine.models import LoadedModels
from bizra_voice.engine.session import LiveSession
from bizra_voice.engine.slots import SlotTable

__all__ = ["EngineRuntime", "LiveSession", "LoadedModels"]

log = logging.getLogger("bizra_voice.engine")


_ARRIVAL_SLACK_S = 0.002  # network and Opus jitter allowed around a session's due frame


def _ms_quantile(values: collections.deque, q: float) -> float:
    return float(np.quantile(np.asarray(values), q)) if values else 0.0


_DONE = object()


@dataclass(eq=False)
class _Prefill:
    """A prefill in progress on the tick thread: a joining session's prompt, or a live row's re-anchor."""

    session: LiveSession
    steps: Any  # iterator of the engine's resumable steps
    kind: str  # "start" | "reanchor" | "reprompt"
    future: concurrent.futures.Future | None = None  # start: resolved with the seed; reprompt: when applied


@dataclass
class _SlotState:
    """What the tick thread keeps for one live session."""

    session: LiveSession
    frames: collections.deque = field(default_factory=collections.deque)
    arrivals: collections.deque = field(default_factory=collections.deque)  # monotonic time of each frame
    last_arrival: float | None = None  # when its latest frame arrived: the next is due one frame later
    produced: int = 0
    behind_since: float | None = None  # since when it has had more than ``behind_frames`` queued


class EngineRuntime:
    """Owns the tick thread, admits and releases sessions."""

    def __init__(self, engine: Any, models: LoadedModels, sizing: SlotChoice | None = None) -> None:
        self.engine = engine
        self.models = models
        self.tokenizer = models.bundle.tokenizer
        self.config = models.config
        self.capacity = engine.slots
        self.sizing = sizing  # how the slot count was chosen (None: built directly, e.g. by a test)
        self._tick_log: collections.deque = collections.deque(maxlen=4000)  # (monotonic end, ms)
        self._tick_log_lock = threading.Lock()
        self.input_frames_dropped = 0
        self.sessions_ended: collections.Counter = collections.Counter()  # by EndCause value (server ends)
        self._prefills: collections.deque[_Prefill] = collections.deque()  # run in order, between ticks
        self.prefill_steps = 0
        self.prefill_step_ms_max = 0.0
        engine.prefill_chunk = self.config.prefill_chunk
        self._slots = SlotTable(engine.slots)
        self._live: dict[int, _SlotState] = {}
        self._jobs: collections.deque = collections.deque()
        self._wake = threading.Condition()
        self._running = True
        self._tick_ms: collections.deque = collections.deque(maxlen=2000)
        self._tick_ewma_ms: float | None = None
        self.ticks = 0
        self.deadline_misses = 0
        self.sessions_started = 0
        self.sessions_rejected = 0
        self.reanchors = 0
        self._thread = threading.Thread(target=self._run, name="bizra-engine-tick", daemon=True)
        self._thread.start()

    load_parts = staticmethod(LoadedModels.load)

    @classmethod
    def create(cls, config: EngineConfig) -> EngineRuntime:
        """Load everything (blocking), size the engine on this machine, build it and start the tick thread."""
        import os

        if not config.cuda_graphs:  # moshi captures CUDA graphs on its own unless this is set (per process)
            os.environ["NO_CUDA_GRAPH"] = "1"
        return cls.start(LoadedModels.load(config))

    @classmethod
    def start(cls, models: LoadedModels) -> EngineRuntime:
        """Size (``engine.slots``: measured when 'auto', checked against memory when a number) and start."""
        from bizra_voice.engine.batched import BatchedEngine
        from bizra_voice.engine.calibrate import calibrate_slots

        config = models.config
        if models.bundle.device.type == "cpu" and config.cpu_threads is not None:
            import torch

            torch.set_num_threads(config.cpu_threads)
        if models.bundle.device.type == "cuda" and config.memory_fraction is not None:
            import torch

            torch.cuda.set_per_process_memory_fraction(config.memory_fraction, models.bundle.device)
        sizing = calibrate_slots(models.bundle, config)
        engine = BatchedEngine(models.bundle, sizing.slots)
        engine.keep_history(config.reanchor_history, config.reanchor_margin)
        if models.bundle.device.type == "cuda" and config.cuda_graphs:
            log.info("capturing CUDA graphs for prefix sizes %s", engine.warm_buckets())
        runtime = cls(engine, models, sizing)
        log.info("engine ready: %s on %s (%s), %s, %d voices", models.bundle.files.source,
                 models.bundle.device, models.bundle.dtype, sizing.summary(), len(models.library.catalog))
        return runtime

    # ---- public API (event loop) ----------------------------------------------------------------------
    def tick_thread_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """False once the tick thread has stopped (shutdown or a fatal error): the replica is unhealthy."""
        return self._thread.is_alive()

    @property
    def active_sessions(self) -> int:
        return self._slots.used

    def voices(self) -> list[dict[str, str]]:
        return self.models.library.catalog.listing()

    def recent_tick_p99_ms(self, window_s: float | None = None) -> tuple[float, int]:
        """p99 tick time of the last ``window_s`` seconds (default ``admission_window_s``) and how many ticks."""
        horizon = time.monotonic() - (self.config.admission_window_s if window_s is None else window_s)
        with self._tick_log_lock:
            recent = [ms for at, ms in self._tick_log if at >= horizon]
        return percentile(recent, 0.99), len(recent)

    def admission_refusal(self) -> str | None:
        """Why a new session would be refused now (None: it would be admitted). Cheap; event loop."""
        used = self._slots.used
        if used >= self.capacity:
            return f"All {self.capacity} session slots are in use; try again shortly."
        if used and self.config.admission_window_s > 0:
            p99, count = self.recent_tick_p99_ms()
            if count >= 10 and p99 > self.config.tick_budget_ms:
                return (f"The engine cannot take another session in real time right now ({used} active, p99 "
                        f"tick {p99:.0f} ms over the {self.config.tick_budget_ms:g} ms budget); try again shortly.")
        return None

    async def open_session(self, spec: SessionSpec) -> LiveSession:
        session_id = uuid.uuid4().hex[:12]
        refusal = self.admission_refusal()
        if refusal is not None:
            self.sessions_rejected += 1
            raise AtCapacity(refusal)
        try:
            slot = self._slots.acquire(session_id)
        except AtCapacity:
            self.sessions_rejected += 1
            raise
        try:
            prompt = await asyncio.to_thread(self.models.prepare, spec)
            loop = asyncio.get_running_loop()
            session = LiveSession(self, session_id, slot, prompt.voice.name if prompt.voice else "", 0,
                                  prompt.length, loop, spec.text_prompt)
            started = time.perf_counter()
            seed = await asyncio.wrap_future(self._queue_start(session, prompt, spec))
        except BaseException:
            self._slots.release(slot, session_id)
            raise
        session.seed = seed
        session.prefill_ms = (time.perf_counter() - started) * 1000
        self.sessions_started += 1
        return session

    def stats(self) -> dict[str, Any]:
        ticks = list(self._tick_ms)
        return {
            "slots_total": self.capacity, "slots_used": self._slots.used, "slots_free": self._slots.free,
            "ticks": self.ticks, "deadline_misses": self.deadline_misses,
            "tick_ms_p50": round(_ms_quantile(ticks, 0.5), 3), "tick_ms_p99": round(_ms_quantile(ticks, 0.99), 3),
            "sessions_started": self.sessions_started, "sessions_rejected": self.sessions_rejected,
            "reanchors": self.reanchors, "input_frames_dropped": self.input_frames_dropped,
            "prefill_steps": self.prefill_steps, "prefill_step_ms_max": round(self.prefill_step_ms_max, 3),
            "sessions_ended_by_server": dict(self.sessions_ended),
        }

    def tick_times_since(self, seen: int) -> tuple[int, list[float]]:
        """Tick durations (ms) recorded after the first ``seen`` ticks (the last 2000 at most), and the new
        tick count to pass next time (the metrics pump reads these; the tick thread is never blocked)."""
        ticks = self.ticks
        values = list(self._tick_ms)
        fresh = max(0, min(ticks - seen, len(values)))
        return ticks, values[len(values) - fresh:]

    def shutdown(self) -> None:
        with self._wake:
            self._running = False
            self._wake.notify_all()
        self._thread.join(timeout=10)
        for state in list(self._live.values()):
            self._end_session(state.session, "the server is shutting down", EndCause.SHUTDOWN)
        for task in list(self._prefills):
            if task.future is not None and not task.future.done():
                task.future.set_exception(SessionClosed("The server is shutting down.", EndCause.SHUTDOWN))

    # ---- thread plumbing -------------------------------------------------------------------------------
    def _submit(self, fn: Any, *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._wake:
            self._jobs.append((future, fn, args))
            self._wake.notify()
        return future

    def _enqueue_frames(self, session: LiveSession, frames: np.ndarray) -> None:
        with self._wake:
            state = self._live.get(session.slot)
            if state is None or state.session is not session:
                return
            now = time.monotonic()
            state.frames.extend(frames)
            state.arrivals.extend([now] * len(frames))
            state.last_arrival = now
            dropped = 0
            if len(state.frames) > self.config.max_pending_frames:  # catch up: the oldest input goes
                dropped = len(state.frames) - self.config.catchup_frames
                for _ in range(dropped):
                    state.frames.popleft()
                    state.arrivals.popleft()
                session.input_frames_dropped += dropped
                self.input_frames_dropped += dropped
            self._wake.notify()
        if dropped:
            log.warning("session %s: the engine was %.1f s behind its audio; dropped the oldest %d input frames "
                        "to catch up (%d so far)", session.session_id,
                        (dropped + self.config.catchup_frames) * C.FRAME_MS / 1000, dropped,
                        session.input_frames_dropped)
            session._loop.call_soon_threadsafe(session._report_input_dropped, dropped)

    def _queue_start(self, session: LiveSession, prompt: Any, spec: SessionSpec) -> concurrent.futures.Future:
        """Queue the session's prompt prefill; the future resolves with its seed once the slot is live."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        steps = self.engine.start_slot_steps(session.slot, prompt, spec.sampling)
        with self._wake:
            self._prefills.append(_Prefill(session, steps, "start", future))
            self._wake.notify()
        return future

    def _queue_reprompt(self, session: LiveSession, prompt: Any) -> concurrent.futures.Future:
        """Queue a live prompt change of ``session``'s slot; the future resolves once it is in effect."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._wake:
            if session.closed or self._live.get(session.slot) is None:
                future.set_exception(session._closed_error())
                return future
            steps = self.engine.reprompt_steps(session.slot, prompt)
            self._prefills.append(_Prefill(session, steps, "reprompt", future))
            self._wake.notify()
        return future

    def _release(self, session: LiveSession) -> None:
        with self._wake:
            state = self._live.get(session.slot)
            if state is not None and state.session is session:
                del self._live[session.slot]
            for task in [t for t in self._prefills if t.session is session]:
                self._prefills.remove(task)
                if task.future is not None and not task.future.done():
                    task.future.set_exception(SessionClosed("The session closed during its prefill."))
        if self._slots.owner(session.slot) == session.session_id:
            self.engine.reset_slot(session.slot)
            self._slots.release(session.slot, session.session_id)

    def _run_prefills(self, budget_ms: float) -> None:
        """Advance queued prefills (joining sessions' prompts, re-anchors) for about ``budget_ms`` — at least
        one step — between ticks, so no prefill holds the running sessions' frames for longer."""
        started = time.perf_counter()
        while True:
            with self._wake:
                task = self._prefills[0] if self._prefills else None
            if task is None:
                return
            if task.future is not None and task.future.cancelled():  # the client gave up while it waited
                with self._wake:
                    self._drop_prefill(task)
                continue
            step_started = time.perf_counter()
            try:
                finished = next(task.steps, _DONE) is _DONE
            except Exception as exc:
                with self._wake:
                    self._drop_prefill(task)
                self._prefill_failed(task, exc)
                continue
            self.prefill_steps += 1
            self.prefill_step_ms_max = max(self.prefill_step_ms_max, (time.perf_counter() - step_started) * 1000)
            if finished:
                abandoned = task.future is not None and task.future.cancelled()  # the client left meanwhile
                with self._wake:
                    self._drop_prefill(task)
                    if task.kind == "start" and not abandoned:
                        self._live[task.session.slot] = _SlotState(task.session)
                if abandoned:
                    if self._slots.owner(task.session.slot) is None:  # released by open_session: clean the row
                        self.engine.reset_slot(task.session.slot)
                    continue
                if task.kind == "start" and task.future is not None and not task.future.done():
                    task.future.set_result(self.engine._started_seed)
                elif task.kind == "reprompt" and task.future is not None and not task.future.done():
                    task.future.set_result(None)
                elif task.kind == "reanchor":
                    task.session.reanchors += 1
                    self.reanchors += 1
            if (time.perf_counter() - started) * 1000 >= budget_ms:
                return

    def _drop_prefill(self, task: _Prefill) -> None:
        """Caller holds ``self._wake``."""
        if task in self._prefills:
            self._prefills.remove(task)

    def _prefill_failed(self, task: _Prefill, exc: Exception) -> None:
        if task.kind == "reprompt":  # the row kept its old context: tell the caller, the session goes on
            log.error("live prompt change of session %s failed", task.session.session_id, exc_info=exc)
            if task.future is not None and not task.future.done():
                task.future.set_exception(EngineError(f"the new prompt could not be applied ({type(exc).__name__}); "
                                                      "the session keeps its old one"))
            return
        if task.kind == "start":
            if task.future is not None and not task.future.done():
                task.future.set_exception(exc)
            return
        log.error("re-anchoring session %s failed", task.session.session_id, exc_info=exc)
        self._end_session(task.session, f"its persona could not be re-anchored past the model's context window "
                          f"({type(exc).__name__})", EndCause.REANCHOR_FAILED)

    def _coalesce_wait(self) -> float | None:
        """Seconds the tick thread should still wait before ticking (None: no frame is queued).

        A tick costs about the same however few of its rows have a frame, and sessions send out of phase,
        so ticking on every arrival would run up to N full ticks per 80 ms. Each session's next frame is
        due one frame after its last one; the tick waits for the frames due before the oldest queued frame
        has waited one tick time (at most a quarter frame), and runs at once when none is due by then.
        Caller holds ``self._wake``.
        """
        pending = [state for state in self._live.values() if state.frames]
        if not pending:
            return None
        if self._tick_ewma_ms is None:
            return 0.0
        now = time.monotonic()
        oldest = min(state.arrivals[0] if state.arrivals else now for state in pending)
        deadline = oldest + min(self._tick_ewma_ms, C.FRAME_MS / 4) / 1000
        due = [state.last_arrival + C.FRAME_MS / 1000 for state in self._live.values()
               if not state.frames and state.last_arrival is not None]
        due = [t + _ARRIVAL_SLACK_S for t in due if now - _ARRIVAL_SLACK_S <= t <= deadline]
        return max(due) - now if due else 0.0

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._running and not self._jobs and not self._prefills:
                    wait = self._coalesce_wait()
                    if wait is not None and wait <= 0:
                        break
                    self._wake.wait(timeout=0.5 if wait is None else wait)
                if not self._running:
                    return
                job = self._jobs.popleft() if self._jobs else None
                wait = self._coalesce_wait()
                batch = self._take_batch() if wait is not None and wait <= 0 else {}
                prefilling = bool(self._prefills)
            if job is not None:
                future, fn, args = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as exc:  # reported to the awaiting session, the thread goes on
                        future.set_exception(exc)
            if batch:
                try:
                    self._tick(batch)
                except Exception as exc:  # never let one bad tick stop the thread (and every session)
                    log.exception("tick bookkeeping failed")
                    for slot in batch:
                        state = self._live.get(slot)
                        if state is not None:
                            self._end_session(state.session, f"internal engine error ({type(exc).__name__})",
                                              EndCause.ENGINE_ERROR)
            if prefilling:
                self._run_prefills(self.config.prefill_slice_ms)

    def _take_batch(self) -> dict[int, np.ndarray]:
        """Each live session's oldest queued frame; ends a session that has stayed behind too long.
        Caller holds ``self._wake``."""
        now = time.monotonic()
        batch = {}
        for slot, state in self._live.items():
            if not state.frames:
                continue
            if len(state.frames) > self.config.behind_frames:
                state.behind_since = state.behind_since or now
                if now - state.behind_since > self.config.behind_grace_s:
                    lag_s = len(state.frames) * C.FRAME_MS / 1000
                    state.frames.clear()
                    state.arrivals.clear()
                    self._end_session(state.session, f"the server stayed behind this session's audio for more "
                                      f"than {self.config.behind_grace_s:g} s (last {lag_s:.1f} s behind, "
                                      f"{state.session.input_frames_dropped} input frames dropped to catch up)",
                                      EndCause.FELL_BEHIND)
                    continue
            else:
                state.behind_since = None
            batch[slot] = state.frames.popleft()
            if state.arrivals:
                state.arrivals.popleft()
        return batch

    def _end_session(self, session: LiveSession, reason: str, cause: EndCause) -> None:
        if not session.closed:
            self.count_server_end(cause)
        session._end(reason, cause)

    def count_server_end(self, cause: EndCause) -> None:
        with self._tick_log_lock:
            self.sessions_ended[cause.value] += 1

    def _tick(self, batch: dict[int, np.ndarray]) -> None:
        from bizra_voice.engine.batched import text_piece

        pcm = np.zeros((self.capacity, C.FRAME_SIZE), dtype=np.float32)
        active = np.zeros(self.capacity, dtype=bool)
        for slot, frame in batch.items():
            pcm[slot] = frame
            active[slot] = True
        started = time.perf_counter()
        try:
            result = self.engine.tick(pcm, active)
        except Exception as exc:
            log.exception("tick failed")
            for slot in batch:
                state = self._live.get(slot)
                if state is not None:
                    self._end_session(state.session, f"internal engine error ({type(exc).__name__})",
                                      EndCause.ENGINE_ERROR)
            return
        tick_ms = (time.perf_counter() - started) * 1000
        self._tick_ms.append(tick_ms)
        with self._tick_log_lock:
            self._tick_log.append((time.monotonic(), tick_ms))
        self._tick_ewma_ms = tick_ms if self._tick_ewma_ms is None else 0.8 * self._tick_ewma_ms + 0.2 * tick_ms
        self.ticks += 1
        if tick_ms > C.FRAME_MS:
            self.deadline_misses += 1
        for slot in batch:
            state = self._live.get(slot)
            if state is None or not result.produced[slot]:
                continue
            token = int(result.text[slot])
            text = text_piece(self.tokenizer, token)
            guided = bool(result.guided[slot]) if result.guided is not None else False
            out = FrameOutput(frame=state.produced, pcm=result.pcm[slot].copy(), text_token=token, text=text,
                              agent_codes=result.agent[slot].copy(), tick_ms=tick_ms, guided=guided)
            state.produced += 1
            state.session._loop.call_soon_threadsafe(state.session._deliver, out)
            if self.engine.needs_reanchor(slot):  # prefilled between the next ticks (``_run_prefills``)
                with self._wake:
                    self._prefills.append(_Prefill(state.session, self.engine.reanchor_steps(slot), "reanchor"))
