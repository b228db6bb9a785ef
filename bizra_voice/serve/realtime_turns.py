"""The user's side of one ``/v1/realtime`` connection: appended audio becomes committed user items.

A user turn ends in one of two ways:

- ``input_audio_buffer.commit``: the client says so; the turn is everything appended since the last
  commit (as the client sent it, played into the model yet or not);
- when the session transcribes (``audio.input.transcription`` set, or mode hybrid/auto, and a Transcriber
  is deployed), the ``TurnDetector`` finds turns in the audio as the model hears it: speech_started,
  speech_stopped, then committed (the audio up to that point leaves the commit buffer).

Each committed turn goes to hybrid mode when it listens (it transcribes, routes and may answer), or is
only transcribed (``conversation.item.input_audio_transcription.completed`` / ``.failed``). The commit
buffer keeps the last ``MAX_UNCOMMITTED_S`` of audio: a client that never commits does not grow memory.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from bizra_voice import constants as C
from bizra_voice.realtime import Conversation, RealtimeError, new_id
from bizra_voice.realtime import server_events as E
from bizra_voice.turns import TurnConfig, TurnDetector, TurnEvent

log = logging.getLogger("ray.serve")

MAX_UNCOMMITTED_S = 120.0
Send = Callable[[dict[str, Any]], Awaitable[None]]
Transcribe = Callable[[np.ndarray, int], Awaitable[dict[str, Any]]]


class _Uncommitted:
    """Audio appended since the last commit, addressed by sample offset in everything appended."""

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self.appended = 0  # samples appended in the whole session
        self.start = 0  # offset of the first sample kept
        self._chunks: collections.deque[np.ndarray] = collections.deque()

    def __len__(self) -> int:
        return self.appended - self.start

    def append(self, pcm: np.ndarray) -> None:
        self._chunks.append(pcm)
        self.appended += pcm.size
        self.drop_until(self.appended - self.max_samples)

    def drop_until(self, offset: int) -> None:
        while self._chunks and self.start < offset:
            head = self._chunks[0]
            cut = min(head.size, offset - self.start)
            if cut == head.size:
                self._chunks.popleft()
            else:
                self._chunks[0] = head[cut:]
            self.start += cut

    def take(self) -> np.ndarray:
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        self._chunks.clear()
        self.start = self.appended
        return audio


class UserTurns:
    """Commit buffer, turn detection on the played audio, and where each finished turn goes."""

    def __init__(self, conversation: Conversation, send: Send, *, transcriber: Transcribe | None,
                 transcribe_timeout_s: float, wants_transcripts: Callable[[], bool]) -> None:
        self.conversation = conversation
        self.send = send
        self.transcriber = transcriber
        self.transcribe_timeout_s = transcribe_timeout_s
        self.wants_transcripts = wants_transcripts  # asked at each turn (session.update may change it)
        self.buffer = _Uncommitted(int(MAX_UNCOMMITTED_S * C.SAMPLE_RATE))
        self.played_samples = 0  # audio the model has heard (speech event times are on its timeline)
        self.started = False
        self.hybrid: Any = None
        self.detector: TurnDetector | None = None
        self.clock: Callable[[], float] = time.perf_counter
        self._turn_item: str | None = None
        self._early: list[tuple[str, TurnEvent]] = []  # committed before the engine session was open
        self._tasks: set[asyncio.Task] = set()

    def start(self, hybrid: Any, turn_config: TurnConfig | None) -> None:
        """The engine session is open: hybrid mode (or None) and, when turns are detected, their settings."""
        self.started, self.hybrid = True, hybrid
        if hybrid is not None:
            self.clock = hybrid.clock  # turn events go to the controller: one clock for both
        self.detector = TurnDetector(turn_config) if turn_config is not None else None
        early, self._early = self._early, []
        for item_id, turn in early:
            self._route(item_id, turn)

    def appended(self, pcm: np.ndarray) -> None:
        self.buffer.append(pcm)

    def clear(self) -> dict[str, Any]:
        self.buffer.take()
        return E.cleared()

    async def commit(self, event_id: str | None) -> None:
        if not len(self.buffer):
            raise RealtimeError("The input audio buffer is empty: append audio before committing.",
                                "input_audio_buffer_commit_empty", event_id=event_id)
        audio = self.buffer.take()
        item_id = new_id("item")
        for event in self.conversation.committed(item_id):
            await self.send(event)
        turn = TurnEvent("turn.end", self.clock(), audio, audio.size * 1000 / C.SAMPLE_RATE, "commit")
        if self.wants_transcripts():
            self._route(item_id, turn)

    async def played(self, pcm: np.ndarray) -> None:
        """A frame the model just heard."""
        self.played_samples += pcm.size
        if self.detector is not None:
            for turn in self.detector.push_user_pcm(pcm, self.clock()):
                await self._turn_event(turn)

    async def assistant_text(self, text: str) -> None:
        """The model's text step: a word while the user has paused ends the user's turn early."""
        if self.detector is not None:
            turn = self.detector.push_assistant_token(bool(text.strip()), self.clock())
            if turn is not None:
                await self._turn_event(turn)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _turn_event(self, turn: TurnEvent) -> None:
        at_ms = int(self.played_samples * 1000 / C.SAMPLE_RATE)
        if turn.kind == "speech.start":
            self._turn_item = new_id("item")
            await self.send(E.speech_started(self._turn_item, at_ms))
            if self.hybrid is not None:
                self.hybrid.on_turn_event(turn)  # a barge-in stops a guided answer
        elif turn.kind == "turn.end":
            item_id, self._turn_item = self._turn_item or new_id("item"), None
            await self.send(E.speech_stopped(item_id, at_ms))
            for event in self.conversation.committed(item_id):
                await self.send(event)
            self.buffer.drop_until(self.played_samples)  # what was heard is committed; what waits is not
            if turn.audio is not None and turn.audio.size:
                self._route(item_id, turn)

    def _route(self, item_id: str, turn: TurnEvent) -> None:
        """A finished user turn: hybrid mode transcribes and answers it; otherwise it is only transcribed."""
        if not self.started:
            self._early.append((item_id, turn))  # routed once the engine session (and hybrid mode) is open
            return
        if self.hybrid is not None and self.hybrid.hears_speech:
            self.hybrid.on_turn_event(turn, item_id)  # -> transcript.user / transcript.error with item_id
        elif self.transcriber is not None:
            task = asyncio.create_task(self._transcribe(item_id, turn.audio))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _transcribe(self, item_id: str, audio: np.ndarray) -> None:
        try:
            result = await asyncio.wait_for(self.transcriber(audio, C.SAMPLE_RATE), self.transcribe_timeout_s)
        except Exception as exc:
            log.warning("transcription of %s failed: %s", item_id, type(exc).__name__)
            await self.send(E.transcription_failed(item_id, f"transcription failed ({type(exc).__name__})"))
            return
        await self.send(E.transcription_completed(item_id, str(result.get("text", "")), audio.size / C.SAMPLE_RATE))
