"""The engine's dedicated tick thread and the asyncio-facing session handles.

The model runs on one thread that owns the batched state; the asyncio loop never blocks on it. Sessions
push PCM (any chunking) and await frames; prompt prefills are queued to the thread and run between ticks,
one per loop turn, so a joining session delays running ones by at most one prefill.
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
    BadSessionRequest,
    EngineError,
    FrameOutput,
    SessionClosed,
    SessionSpec,
)
from bizra_voice.engine.config import EngineConfig
from bizra_voice.engine.slots import SlotTable
from bizra_voice.prompt import PromptError, resolve_persona, wrap_system_prompt

log = logging.getLogger("bizra_voice.engine")


# Frames of output a session may leave unread before it is ended (the serving layer drains this queue at
# once into its own bounded buffer; this bound only catches a consumer that stopped altogether).
MAX_OUTPUT_FRAMES = 250  # 20 s


_ARRIVAL_SLACK_S = 0.002  # network and Opus jitter allowed around a session's due frame


def _ms_quantile(values: collections.deque, q: float) -> float:
    return float(np.quantile(np.asarray(values), q)) if values else 0.0


@dataclass
class _SlotState:
    """What the tick thread keeps for one live session."""

    session: LiveSession
    frames: collections.deque = field(default_factory=collections.deque)
    arrivals: collections.deque = field(default_factory=collections.deque)  # monotonic time of each frame
    last_arrival: float | None = None  # when its latest frame arrived: the next is due one frame later
    produced: int = 0


class LiveSession:
    """One conversation on one slot. ``push_pcm`` from the event loop; ``next_output`` awaits frames."""

    def __init__(self, runtime: EngineRuntime, session_id: str, slot: int, voice: str, seed: int,
                 prompt_positions: int, loop: asyncio.AbstractEventLoop) -> None:
        self.runtime = runtime
        self.session_id = session_id
        self.slot = slot
        self.voice = voice
        self.seed = seed
        self.prompt_positions = prompt_positions
        self.prefill_ms = 0.0
        self._loop = loop
        self._outputs: asyncio.Queue[FrameOutput | BaseException] = asyncio.Queue()
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_in = 0
        self.frames_out = 0
        self.closed = False
        self.close_reason: str | None = None
        self.reanchors = 0  # times the persona was re-anchored past the context window
        self.max_output_frames = MAX_OUTPUT_FRAMES
        self.outputs_dropped = 0

    def push_pcm(self, pcm: np.ndarray) -> None:
        """Queue float32 mono 24 kHz samples; full 80 ms frames go to the tick thread."""
        if self.closed:
            raise SessionClosed(self.close_reason or "The session is closed.")
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if not np.isfinite(pcm).all():
            raise BadSessionRequest("Audio contains NaN or infinite samples.")
        self._pending = np.concatenate([self._pending, pcm]) if self._pending.size else pcm
        full = self._pending.size // C.FRAME_SIZE
        if not full:
            return
        frames = self._pending[: full * C.FRAME_SIZE].reshape(full, C.FRAME_SIZE)
        self._pending = self._pending[full * C.FRAME_SIZE:].copy()
        self.frames_in += full
        self.runtime._enqueue_frames(self, frames)

    async def guide(self, tokens: list[int]) -> int:
        """Make the persona say these PersonaPlex text tokens, in its own voice and timing (hybrid mode)."""
        if self.closed:
            raise SessionClosed(self.close_reason or "The session is closed.")
        return await asyncio.wrap_future(self.runtime._submit(self.runtime.engine.set_guidance, self.slot, tokens))

    async def cancel_guidance(self) -> int:
        """Barge-in: drop the rest of the guidance; returns how many tokens were left unsaid."""
        if self.closed:
            return 0
        return await asyncio.wrap_future(self.runtime._submit(self.runtime.engine.cancel_guidance, self.slot))

    async def guidance_progress(self) -> tuple[int, int]:
        return await asyncio.wrap_future(self.runtime._submit(self.runtime.engine.guidance_progress, self.slot))

    async def next_output(self) -> FrameOutput:
        item = await self._outputs.get()
        if isinstance(item, BaseException):
            self._outputs.put_nowait(item)  # every later call sees the end too
            raise item
        self.frames_out += 1
        return item

    def _deliver(self, item: FrameOutput | BaseException) -> None:
        if isinstance(item, FrameOutput) and self._outputs.qsize() >= self.max_output_frames:
            self.outputs_dropped += 1
            if not self.closed:  # bounded: the end is reported instead of growing the queue
                self.closed = True
                self.close_reason = (f"this session's output was not read ({self._outputs.qsize()} frames, "
                                     f"{self._outputs.qsize() * C.FRAME_MS / 1000:.1f} s, were waiting)")
                self._outputs.put_nowait(SessionClosed(self.close_reason))
            return
        self._outputs.put_nowait(item)

    def _end(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self._loop.call_soon_threadsafe(self._deliver, SessionClosed(reason))

    async def close(self, reason: str = "closed by the client") -> None:
        """Free the slot (idempotent)."""
        self._end(reason)
        if self.runtime._thread.is_alive():
            await asyncio.wrap_future(self.runtime._submit(self.runtime._release, self))
        else:
            self.runtime._release(self)


@dataclass
class LoadedModels:
    """Models, voices and the request rules: everything but the batched state."""

    bundle: Any
    library: Any
    config: EngineConfig

    @classmethod
    def load(cls, config: EngineConfig) -> LoadedModels:
        """Resolve and load the checkpoint (blocking; one clear sentence on any problem)."""
        from pathlib import Path

        from bizra_voice.engine.checkpoint import resolve_checkpoint
        from bizra_voice.engine.loading import load_bundle, pick_device, pick_dtype
        from bizra_voice.voices import VoiceCatalog, VoiceLibrary

        files = resolve_checkpoint(config.checkpoint, config.hf_token_env, config.revision, config.cache_dir)
        device = pick_device(config.device)
        bundle = load_bundle(files, device, pick_dtype(config.dtype, device), config.quantize_int8,
                             config.cpu_offload_layers)
        custom = Path(config.custom_voices_dir) if config.custom_voices_dir else None
        catalog = VoiceCatalog(files.voices_dir, custom)
        if len(catalog) == 0:
            raise EngineError(f"No voices found for {files.source}: expected voices.tgz or a voices/ folder.")
        if config.default_voice not in catalog:
            raise EngineError(f"Default voice {config.default_voice!r} is not among the installed voices "
                              f"({', '.join(v['name'] for v in catalog.listing())}).")
        return cls(bundle, VoiceLibrary(catalog, bundle.voice_mimi, bundle.lm.dim), config)

    def prepare(self, spec: SessionSpec) -> Any:
        """Validate and tokenize a request (cheap after a voice's first use; raises BadSessionRequest)."""
        from bizra_voice.engine.batched import PreparedPrompt

        try:
            persona = resolve_persona(spec.text_prompt, self.config.default_persona, self.config.max_prompt_chars)
        except PromptError as exc:
            raise BadSessionRequest(str(exc)) from exc
        voice = self.library.prepare(spec.voice or self.config.default_voice)
        tokens = [int(t) for t in self.bundle.tokenizer.encode(wrap_system_prompt(persona))]
        prompt = PreparedPrompt(voice=voice, tokens=tokens)
        room = self.bundle.context - self.config.reanchor_margin
        if prompt.length >= room:
            raise BadSessionRequest(f"The voice and text prompt take {prompt.length} frames; the model's context "
                                    f"leaves {room}: use a shorter prompt or voice.")
        return prompt


class EngineRuntime:
    """Owns the tick thread, admits and releases sessions."""

    def __init__(self, engine: Any, models: LoadedModels) -> None:
        self.engine = engine
        self.models = models
        self.tokenizer = models.bundle.tokenizer
        self.config = models.config
        self.capacity = engine.slots
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
        """Load everything (blocking), build the batched engine and start the tick thread."""
        import os

        from bizra_voice.engine.batched import BatchedEngine

        if not config.cuda_graphs:  # moshi captures CUDA graphs on its own unless this is set (per process)
            os.environ["NO_CUDA_GRAPH"] = "1"
        models = LoadedModels.load(config)
        engine = BatchedEngine(models.bundle, config.slots)
        engine.keep_history(config.reanchor_history, config.reanchor_margin)
        runtime = cls(engine, models)
        log.info("engine ready: %s on %s (%s), %d slots, %d voices", models.bundle.files.source,
                 models.bundle.device, models.bundle.dtype, config.slots, len(models.library.catalog))
        return runtime

    # ---- public API (event loop) ----------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """False once the tick thread has stopped (shutdown or a fatal error): the replica is unhealthy."""
        return self._thread.is_alive()

    @property
    def active_sessions(self) -> int:
        return self._slots.used

    def voices(self) -> list[dict[str, str]]:
        return self.models.library.catalog.listing()

    async def open_session(self, spec: SessionSpec) -> LiveSession:
        session_id = uuid.uuid4().hex[:12]
        try:
            slot = self._slots.acquire(session_id)
        except AtCapacity:
            self.sessions_rejected += 1
            raise
        try:
            prompt = await asyncio.to_thread(self.models.prepare, spec)
            loop = asyncio.get_running_loop()
            session = LiveSession(self, session_id, slot, prompt.voice.name if prompt.voice else "", 0,
                                  prompt.length, loop)
            started = time.perf_counter()
            seed = await asyncio.wrap_future(self._submit(self._start, session, prompt, spec))
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
            "reanchors": self.reanchors,
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
            state.session._end("the server is shutting down")

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
            if len(state.frames) > self.config.max_pending_frames:
                state.frames.clear()
                state.arrivals.clear()
                session._end(f"the server fell more than {self.config.max_pending_frames * C.FRAME_MS / 1000:.1f}"
                             " s behind this session's audio")
            self._wake.notify()

    def _start(self, session: LiveSession, prompt: Any, spec: SessionSpec) -> int:
        seed = self.engine.start_slot(session.slot, prompt, spec.sampling)
        with self._wake:
            self._live[session.slot] = _SlotState(session)
        return seed

    def _release(self, session: LiveSession) -> None:
        with self._wake:
            state = self._live.get(session.slot)
            if state is not None and state.session is session:
                del self._live[session.slot]
        if self._slots.owner(session.slot) == session.session_id:
            self.engine.reset_slot(session.slot)
            self._slots.release(session.slot, session.session_id)

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
                while self._running and not self._jobs:
                    wait = self._coalesce_wait()
                    if wait is not None and wait <= 0:
                        break
                    self._wake.wait(timeout=0.5 if wait is None else wait)
                if not self._running:
                    return
                job = self._jobs.popleft() if self._jobs else None
                batch = {}
                for slot, state in self._live.items():
                    if state.frames:
                        batch[slot] = state.frames.popleft()
                        if state.arrivals:
                            state.arrivals.popleft()
            if job is not None:
                future, fn, args = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as exc:  # reported to the awaiting session, the thread goes on
                        future.set_exception(exc)
            if batch:
                self._tick(batch)

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
                    state.session._end(f"internal engine error ({type(exc).__name__})")
            return
        tick_ms = (time.perf_counter() - started) * 1000
        self._tick_ms.append(tick_ms)
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
            if self.engine.needs_reanchor(slot):
                self.engine.reanchor(slot)
                state.session.reanchors += 1
                self.reanchors += 1
