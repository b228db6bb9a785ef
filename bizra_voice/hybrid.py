"""Hybrid mode, per session: user turns -> router -> Qwen -> the answer spoken by PersonaPlex (guided).

``HybridController`` is attached to one ``ChatSession``. It is fed three things and calls out through
injected async callables, so it runs (and is tested) without Ray:

- the user's decoded PCM (``on_input_pcm``): a ``TurnDetector`` finds the end of a user turn, the turn's
  audio goes to the ``transcribe`` callable (the Transcriber deployment) -> ``transcript.user``;
  speech onset while an answer is being spoken is a barge-in -> ``cancel`` + ``playback.flush``;
- typed questions (``on_user_text``, the client's ``{"type": "user.text"}``) -> the same path;
- every produced frame (``on_output``): PersonaPlex's own turn-taking (a word while the user pauses ends
  the user turn early), the assistant text for the memory, and the first guided word (latency figures).

A turn: ``route`` (ModeRouter.decide_turn) -> ``router.decision``; if hybrid, ``answer`` (the knowledge
model, streamed) must yield its first piece within ``deadline_ms`` or the turn falls back to standalone (a
second ``router.decision`` with ``fallback: true`` says why). Streamed pieces become ``knowledge.answer``
events and, cut at word boundaries and re-tokenised with PersonaPlex's SentencePiece model, guidance tokens.

The stream may also carry events (dicts): ``tool.call`` / ``tool.result`` of the server-side tools the
model calls (passed on with the turn id; while a tool works the deadline for the next item is the tool's
timeout plus ``deadline_ms``), and ``knowledge.failed`` (the deployment's reason when the answer failed).
No dead air: until answer tokens exist, PersonaPlex keeps talking and listening on its own (full duplex;
guidance only replaces its words once there are words to say), and a wait that outlives its bound falls
back to standalone with the reason, so the session is never silent or stuck.

A Realtime client's own functions (``answer_options``: ``client_tools``, ``tool_choice``) pause an answer:
``client_tool.calls`` ends the stream, the client is told (``tool.client_calls``) and ``resume`` goes on
from there with the client's outputs, in a new turn; a newer user turn drops the paused answer, and says so
(``tool.client_calls.dropped``).

Where the parts live (one concern each): the answer's stream read under its bounds, ``answer_stream.py``;
answer text -> PersonaPlex tokens, ``answer_tokens.py``; guidance extended while it is spoken without
dropping or repeating a token, ``answer_guidance.py``; a turn's state, a paused answer and the callables'
shapes, ``hybrid_turn.py``; this module, the controller (what happens when, and what the
client is told when a call out fails or times out).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from bizra_voice import constants as C
from bizra_voice.answer_guidance import MAX_GUIDE_TOKENS, EngineGuidance
from bizra_voice.answer_stream import AnswerBounds, AnswerReader, NoAnswer, Paused
from bizra_voice.answer_tokens import AnswerTokenizer, speakable
from bizra_voice.hybrid_turn import AnswerFn, EmitFn, PausedAnswer, RouteFn, TranscribeFn, TurnState
from bizra_voice.memory import ConversationMemory
from bizra_voice.turns import TurnConfig, TurnDetector, TurnEvent

__all__ = ["AnswerTokenizer", "EngineGuidance", "HybridController", "MAX_GUIDE_TOKENS", "TurnState", "speakable"]

log = logging.getLogger("ray.serve")

MAX_TYPED_CHARS = C.MAX_TYPED_CHARS
MAX_PERSONA_CHARS = 600


class HybridController:
    """Hybrid mode for one session: turns in, ``router.decision`` / ``knowledge.answer`` / ``guidance.*`` out.

    Every failure of a call out (router, Qwen, Transcriber: an exception or a timeout) is told to the
    client as an event with the reason and leaves the session running: the turn stays standalone, or an
    answer cut short ends with what had arrived (``knowledge.answer`` done, ``cut``: why).
    """

    def __init__(self, *, live: Any, emit: EmitFn, requested_mode: str, tokenizer: Any, route: RouteFn,
                 answer: AnswerFn | None, transcribe: TranscribeFn | None, persona: str | None = None,
                 deadline_ms: float = 1500.0, config: Any = None,
                 guidance_factory: Callable[[Any], Any] = EngineGuidance,
                 clock: Callable[[], float] = time.perf_counter, detect_turns: bool = True,
                 knowledge_label: str = "Qwen", tool_timeout_s: float = 8.0) -> None:
        """``detect_turns=False``: the caller runs its own ``TurnDetector`` and hands its events to
        ``on_turn_event`` (the Realtime endpoint, whose clients also see those events).
        ``knowledge_label`` names the model in reasons; ``tool_timeout_s`` is the tools' ``call_timeout_s``."""
        from bizra_voice.config import HybridConfig

        self.live = live
        self.emit = emit
        self.requested = requested_mode
        self.answer_tokenizer = tokenizer
        self.route = route
        self.answer = answer
        self.transcribe = transcribe
        self.persona = (persona or "")[:MAX_PERSONA_CHARS] or None
        self.deadline_ms = deadline_ms
        self.knowledge = f"the knowledge model ({knowledge_label})"
        self.tool_timeout_s = tool_timeout_s
        self.config = config or HybridConfig()
        self.guidance_factory = guidance_factory
        self.clock = clock
        self.memory = ConversationMemory(max_turns=self.config.memory_turns)
        self.turns = TurnDetector(TurnConfig(min_db=self.config.vad_min_db, hangover_ms=self.config.vad_hangover_ms,
                                             early_end_ms=self.config.vad_early_end_ms))
        self.hears_speech = requested_mode != "standalone" and transcribe is not None
        self.listen = detect_turns and self.hears_speech
        self.turn: TurnState | None = None
        self.answer_options: Callable[[], dict] = dict  # extra answer() arguments (the Realtime client's tools)
        self.paused: PausedAnswer | None = None  # an answer waiting for the client's function outputs
        self._turn_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._turn_ids = 0
        self.closed = False

    # ---- plumbing -------------------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if type(exc).__name__ != "ClientGone":
                log.error("hybrid task failed", exc_info=exc)

    async def _send(self, event: dict) -> None:
        if not self.closed:
            await self.emit(event)

    def _ms(self, since: float) -> float:
        return round((self.clock() - since) * 1000.0, 1)

    async def close(self) -> None:
        self.closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- inputs ---------------------------------------------------------------------------------------
    async def on_user_text(self, _session: Any, event: dict) -> None:
        """The client's typed question ``{"type": "user.text", "text": ...}``."""
        text = event.get("text")
        if not isinstance(text, str) or not text.strip():
            await self._send({"type": "user.text.rejected", "reason": "text must be a non-empty string"})
            return
        text = " ".join(text.split())
        if len(text) > MAX_TYPED_CHARS:
            await self._send({"type": "user.text.rejected", "reason": f"text is {len(text)} characters; a typed "
                              f"question may have at most {MAX_TYPED_CHARS}"})
            return
        self._begin_turn(text, "typed", self.clock(), None)

    def on_input_pcm(self, pcm: np.ndarray) -> None:
        if not self.listen or self.closed:
            return
        for event in self.turns.push_user_pcm(pcm, self.clock()):
            self.on_turn_event(event)

    def on_output(self, out: Any) -> None:
        if self.closed:
            return
        now = self.clock()
        if out.text:
            self.memory.add_assistant_text(out.text)
        if self.listen:
            event = self.turns.push_assistant_token(out.text is not None, now)
            if event is not None:
                self.on_turn_event(event)
        turn = self.turn
        if turn is None or turn.guidance is None or not out.guided or turn.finished:
            return
        turn.guided_frames += 1
        if turn.guided_frames == 1:
            timings = dict(turn.timings)
            if turn.t_first_piece is not None:
                timings["first_spoken_word_ms"] = self._ms(turn.t_first_piece)
            timings["end_of_turn_to_first_word_ms"] = self._ms(turn.t_end)
            turn.timings = timings
            self._spawn(self._send({"type": "guidance.started", "turn_id": turn.turn_id, "timings": timings}))
        if turn.answer_done and turn.guided_frames >= turn.total_tokens:
            self._finish(turn, cancelled=False, said=turn.guided_frames, reason="spoken")

    def on_turn_event(self, event: TurnEvent, item_id: str | None = None) -> None:
        """Speech onset (barge-in) or the end of a user turn (transcribe, then route and answer).
        ``item_id`` names the turn for the caller; it comes back in ``transcript.user``/``transcript.error``."""
        if self.closed:
            return
        if event.kind == "speech.start":
            turn = self.turn
            if (self.config.barge_in and turn is not None and turn.guidance is not None and not turn.finished):
                self._spawn(self._barge_in(turn))
        elif event.kind == "turn.end" and event.audio is not None and self.hears_speech:
            self._spawn(self._transcribe_turn(event, item_id))

    # ---- turns ----------------------------------------------------------------------------------------
    async def _barge_in(self, turn: TurnState) -> None:
        said = await self._stop(turn)
        await self._send({"type": "playback.flush", "turn_id": turn.turn_id, "reason": "barge-in"})
        self._finish(turn, cancelled=True, said=said, reason="barge-in")

    async def _stop(self, turn: TurnState) -> int:
        """Stop reading (and generating) the rest of the answer and drop its unsaid words; -> words said."""
        if self._turn_task is not None and self.turn is turn:
            self._turn_task.cancel()
        return await turn.guidance.cancel() if turn.guidance is not None else 0

    async def cancel_answer(self, reason: str) -> bool:
        """The client cancelled the answer being prepared or spoken (Realtime ``response.cancel``)."""
        turn = self.turn
        if turn is None or turn.finished or self._turn_task is None or \
                (self._turn_task.done() and turn.guidance is None):
            return False
        said = await self._stop(turn)
        self._finish(turn, cancelled=True, said=said, reason=reason)
        return True

    def _finish(self, turn: TurnState, *, cancelled: bool, said: int, reason: str) -> None:
        if turn.finished:
            return
        turn.finished = True
        self._spawn(self._send({"type": "guidance.ended", "turn_id": turn.turn_id, "cancelled": cancelled,
                                "reason": reason, "said_tokens": said, "total_tokens": turn.total_tokens}))

    async def _transcribe_turn(self, event: TurnEvent, item_id: str | None = None) -> None:
        assert self.transcribe is not None and event.audio is not None
        t_end = event.at
        named = {"item_id": item_id} if item_id is not None else {}
        try:
            result = await asyncio.wait_for(self.transcribe(event.audio, C.SAMPLE_RATE),
                                            timeout=self.config.transcribe_timeout_s)
        except Exception as exc:
            detail = "timed out" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
            await self._send({"type": "transcript.error", "reason": f"the transcriber failed ({detail})",
                              "audio_s": round(event.audio.size / C.SAMPLE_RATE, 3), **named})
            return
        text = " ".join(str(result.get("text", "")).split())
        info = {"transcribe_ms": self._ms(t_end), "audio_s": round(event.audio.size / C.SAMPLE_RATE, 3),
                "speech_ms": round(event.speech_ms, 1), "end_reason": event.reason,
                "model_ms": result.get("ms"), **named}
        if not text:
            await self._send({"type": "transcript.user", "text": "", "source": "speech", "final": True, **info})
            return
        self._begin_turn(text, "speech", t_end, info)

    def _begin_turn(self, text: str, source: str, t_end: float, info: dict | None) -> None:
        previous = self._turn_task
        self._turn_ids += 1
        turn = TurnState(self._turn_ids, text, source, t_end)
        turn.timings["transcribe_ms"] = (info or {}).get("transcribe_ms", 0.0)
        self._turn_task = self._spawn(self._run_turn(turn, previous, info or {}))

    async def _supersede(self, previous: asyncio.Task | None, why: str) -> None:
        """Stop the turn before this one: its answer task, and what it still had to say."""
        old = self.turn
        if previous is not None and not previous.done():
            previous.cancel()
            await asyncio.gather(previous, return_exceptions=True)
        if old is not None and old.guidance is not None and not old.finished:
            said = await old.guidance.cancel()
            self._finish(old, cancelled=True, said=said, reason=why)

    async def _run_turn(self, turn: TurnState, previous: asyncio.Task | None, info: dict) -> None:
        await self._supersede(previous, "superseded by a new user turn")
        self.turn = turn
        paused, self.paused = self.paused, None
        if paused is not None:  # the client's outputs for it would now answer a question no longer asked
            await self._send({"type": "tool.client_calls.dropped", "turn_id": paused.turn_id,
                              "call_ids": paused.call_ids, "reason": "superseded by a new user turn"})
        user_turn = self.memory.add_user(turn.text, turn.source)
        await self._send({"type": "transcript.user", "turn_id": turn.turn_id, "text": turn.text,
                          "source": turn.source, "final": True, **info})
        t_route = self.clock()
        try:
            decision = await asyncio.wait_for(
                self.route(self.requested, turn.text, self.memory.last_route, turn.source == "typed"),
                timeout=self.config.route_timeout_s)
        except Exception as exc:
            decision = {"type": "router.decision", "mode": "standalone", "requested": self.requested,
                        "reason": f"this turn stays standalone: the router is unavailable ({type(exc).__name__})"}
        turn.timings["route_ms"] = self._ms(t_route)
        self.memory.set_route(user_turn, decision["mode"])
        await self._send({**decision, "turn_id": turn.turn_id, "route_ms": turn.timings["route_ms"]})
        if decision["mode"] != "hybrid" or self.answer is None:
            return
        await self._answer(turn, user_turn)

    def resume(self, outputs: dict[str, str]) -> bool:
        """The client sent its function outputs and asked for a response: the paused answer goes on (a new
        turn, spoken like any answer). False when no answer is paused."""
        paused, self.paused = self.paused, None
        if paused is None or self.closed or self.answer is None:
            return False
        previous = self._turn_task
        self._turn_ids += 1
        turn = TurnState(self._turn_ids, "", "function_call_output", self.clock())
        self._turn_task = self._spawn(self._run_resumed(turn, previous, paused, outputs))
        return True

    async def _run_resumed(self, turn: TurnState, previous: asyncio.Task | None, paused: PausedAnswer,
                           outputs: dict[str, str]) -> None:
        await self._supersede(previous, "superseded by the function's answer")
        self.turn = turn
        await self._send({"type": "knowledge.resumed", "turn_id": turn.turn_id, "resumes": paused.turn_id,
                          "call_ids": paused.call_ids})
        await self._answer(turn, None, resume=paused.resumed_with(outputs))

    async def _pause(self, turn: TurnState, item: dict) -> None:
        """The model called the client's functions: the answer waits for their outputs (``resume``)."""
        self.paused = PausedAnswer(turn.turn_id, list(item["messages"]), list(item["calls"]))
        await self._send({"type": "tool.client_calls", "turn_id": turn.turn_id, "calls": self.paused.calls})

    async def _fallback(self, turn: TurnState, user_turn: Any, why: str) -> None:
        if user_turn is not None:
            self.memory.set_route(user_turn, "standalone")
        await self._send({"type": "router.decision", "mode": "standalone", "requested": self.requested,
                          "fallback": True, "turn_id": turn.turn_id,
                          "reason": f"this turn stays standalone: {why}"})

    async def _answer(self, turn: TurnState, user_turn: Any, resume: list[dict] | None = None) -> None:
        assert self.answer is not None
        context = self.memory.context(self.config.context_turns)
        t_ask = self.clock()
        options = {**self.answer_options(), **({"resume": resume} if resume is not None else {})}
        stream = self.answer(turn.text or None, context, self.persona, **options) if options else \
            self.answer(turn.text, context, self.persona)
        bounds = AnswerBounds(self.knowledge, self.deadline_ms, self.tool_timeout_s, self.config.answer_timeout_s)
        reader = AnswerReader(stream, bounds, lambda event: self._tool_event(turn, event, t_ask), self.clock)
        try:
            first = await reader.first()
        except NoAnswer as why:
            await self._fallback(turn, user_turn, str(why))
            return
        except Paused as paused:  # the client's function comes first: nothing to say yet
            await self._pause(turn, paused.item)
            return
        turn.t_first_piece = self.clock()
        turn.timings["qwen_first_token_ms"] = self._ms(t_ask)
        splitter = AnswerTokenizer(self.answer_tokenizer)
        turn.guidance = self.guidance_factory(self.live)
        text = ""
        piece: str | None = first
        cut: str | None = None  # why the answer stopped before its end (None: it was complete)
        try:
            while piece is not None:
                text += piece
                await self._send({"type": "knowledge.answer", "turn_id": turn.turn_id, "delta": piece,
                                  "done": False})
                tokens = splitter.feed(piece)
                turn.total_tokens += len(tokens)
                await turn.guidance.extend(tokens)
                piece, cut = await reader.next()
        except asyncio.CancelledError:  # barge-in, a client cancel or a newer turn: the model stops too
            reader.cancel()
            raise
        tail = splitter.flush()
        turn.total_tokens += len(tail)
        await turn.guidance.extend(tail)
        turn.timings["qwen_total_ms"] = self._ms(t_ask)
        await self._send({"type": "knowledge.answer", "turn_id": turn.turn_id, "text": " ".join(text.split()),
                          "done": True, "tokens": list(turn.guidance.tokens), "timings": dict(turn.timings),
                          **({"cut": cut} if cut else {})})
        turn.answer_done = True
        if turn.guided_frames >= turn.total_tokens:
            self._finish(turn, cancelled=False, said=turn.guided_frames,
                         reason="spoken" if turn.total_tokens else "nothing speakable in the answer")
        if reader.paused is not None:  # what it said first ("let me check") is spoken; the rest waits
            await self._pause(turn, reader.paused)

    async def _tool_event(self, turn: TurnState, event: dict, t_ask: float) -> None:
        """A ``tool.call`` / ``tool.result`` of this turn's answer: to the client, and into the timings."""
        kind = event.get("type")
        if kind == "tool.call":
            turn.timings.setdefault("tool_call_ms", self._ms(t_ask))  # ask -> the model's first call
        elif kind == "tool.result":
            turn.timings["tool_ms"] = round(turn.timings.get("tool_ms", 0.0) + float(event.get("ms") or 0.0), 1)
            turn.timings["tool_calls"] = turn.timings.get("tool_calls", 0) + 1
        else:
            return
        await self._send({**event, "turn_id": turn.turn_id})
