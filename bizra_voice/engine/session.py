"""One conversation on one engine slot, as the asyncio side sees it (``EngineRuntime`` owns the thread).

``push_pcm`` from the event loop (any chunking; full 80 ms frames go to the tick thread), ``next_output``
awaits the produced frames; ``guide`` / ``cancel_guidance`` drive hybrid mode's guided answers and
``update_prompt`` a live persona or voice change. An end the server causes carries its ``EndCause``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from bizra_voice import constants as C
from bizra_voice.engine.api import BadSessionRequest, EndCause, FrameOutput, SessionClosed, SessionSpec


class SessionHost(Protocol):
    """What a session needs of the engine runtime that owns its slot (``runtime.EngineRuntime``)."""

    engine: Any
    models: Any

    def _submit(self, fn: Any, *args: Any) -> Any: ...
    def _enqueue_frames(self, session: LiveSession, frames: np.ndarray) -> None: ...
    def _queue_reprompt(self, session: LiveSession, prompt: Any) -> Any: ...
    def _release(self, session: LiveSession) -> None: ...
    def count_server_end(self, cause: EndCause) -> None: ...
    def tick_thread_alive(self) -> bool: ...

log = logging.getLogger("bizra_voice.engine")


# Frames of output a session may leave unread before it is ended (the serving layer drains this queue at
# once into its own bounded buffer; this bound only catches a consumer that stopped altogether).
MAX_OUTPUT_FRAMES = 250  # 20 s


class LiveSession:
    """One conversation on one slot. ``push_pcm`` from the event loop; ``next_output`` awaits frames."""

    def __init__(self, runtime: SessionHost, session_id: str, slot: int, voice: str, seed: int,
                 prompt_positions: int, loop: asyncio.AbstractEventLoop, text_prompt: str = "") -> None:
        self.runtime = runtime
        self.session_id = session_id
        self.slot = slot
        self.voice = voice
        self.text_prompt = text_prompt  # the persona as asked for ("" = the server's default)
        self.prompt_changes = 0
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
        self.close_cause: EndCause | None = None
        self.reanchors = 0  # times the persona was re-anchored past the context window
        self.max_output_frames = MAX_OUTPUT_FRAMES
        self.outputs_dropped = 0
        self.input_frames_dropped = 0  # user frames dropped so the engine could catch up (never silent)
        # Called on the event loop with (frames dropped now, total) when the engine drops input to catch up.
        self.on_input_dropped: Callable[[int, int], None] | None = None

    def push_pcm(self, pcm: np.ndarray) -> None:
        """Queue float32 mono 24 kHz samples; full 80 ms frames go to the tick thread."""
        if self.closed:
            raise self._closed_error()
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
            raise self._closed_error()
        return await asyncio.wrap_future(self.runtime._submit(self.runtime.engine.set_guidance, self.slot, tokens))

    async def update_prompt(self, text_prompt: str | None = None, voice: str | None = None) -> dict[str, Any]:
        """Change the persona and/or the voice live: the slot is re-anchored on the new prompt plus the recent
        conversation (between ticks, without resetting the audio streams). Raises ``BadSessionRequest`` for a
        bad value, ``SessionClosed`` if the session ended; either way nothing changed.

        Returns what changed and how long the re-prefill took.
        """
        if self.closed:
            raise self._closed_error()
        changed = [name for name, value in (("text_prompt", text_prompt), ("voice", voice)) if value is not None]
        if not changed:
            raise BadSessionRequest("session.update needs text_prompt and/or voice_prompt.")
        spec = SessionSpec(text_prompt=self.text_prompt if text_prompt is None else text_prompt,
                           voice=self.voice if voice is None else voice)
        prompt = await asyncio.to_thread(self.runtime.models.prepare, spec)
        started = time.perf_counter()
        await asyncio.wrap_future(self.runtime._queue_reprompt(self, prompt))
        if text_prompt is not None:
            self.text_prompt = text_prompt
        if voice is not None and prompt.voice is not None:
            self.voice = prompt.voice.name
        self.prompt_positions = prompt.length
        self.prompt_changes += 1
        return {"changed": changed, "voice": self.voice, "prompt_positions": prompt.length,
                "prefill_ms": round((time.perf_counter() - started) * 1000, 1)}

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

    def _report_input_dropped(self, dropped: int) -> None:
        if self.on_input_dropped is not None:
            try:
                self.on_input_dropped(dropped, self.input_frames_dropped)
            except Exception:  # a reporting hook must not take the session down
                log.exception("on_input_dropped hook failed")

    def _closed_error(self) -> SessionClosed:
        return SessionClosed(self.close_reason or "The session is closed.", self.close_cause or EndCause.CLIENT)

    def _deliver(self, item: FrameOutput | BaseException) -> None:
        if isinstance(item, FrameOutput) and self._outputs.qsize() >= self.max_output_frames:
            self.outputs_dropped += 1
            if not self.closed:  # bounded: the end is reported instead of growing the queue
                self.closed = True
                self.close_cause = EndCause.OUTPUT_NOT_READ
                if self.runtime is not None:
                    self.runtime.count_server_end(EndCause.OUTPUT_NOT_READ)
                self.close_reason = (f"this session's output was not read ({self._outputs.qsize()} frames, "
                                     f"{self._outputs.qsize() * C.FRAME_MS / 1000:.1f} s, were waiting)")
                log.warning("session %s ended: %s", self.session_id, self.close_reason)
                self._outputs.put_nowait(self._closed_error())
            return
        self._outputs.put_nowait(item)

    def _end(self, reason: str, cause: EndCause = EndCause.CLIENT) -> None:
        """Mark the session ended (any thread); the awaiting consumer gets ``SessionClosed`` with ``cause``."""
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self.close_cause = cause
            if cause is not EndCause.CLIENT:
                log.warning("session %s ended by the server (%s): %s", self.session_id, cause.value, reason)
            with contextlib.suppress(RuntimeError):  # its event loop is gone (process shutdown): nobody waits
                self._loop.call_soon_threadsafe(self._deliver, self._closed_error())

    async def close(self, reason: str = "closed by the client") -> None:
        """Free the slot (idempotent)."""
        self._end(reason)
        if self.runtime.tick_thread_alive():
            await asyncio.wrap_future(self.runtime._submit(self.runtime._release, self))
        else:
            self.runtime._release(self)
