"""Hybrid mode's error paths, without Ray: scripted stand-ins for the router, Qwen and the Transcriber.

Each call out can hang, raise or give nothing. For every such case the test checks what the client is told
(the events, in order, with their reasons), that the knowledge model's stream is stopped when its answer is
no longer wanted, that nothing is left to the "hybrid task failed" log, and that the session goes on: the
next turn is routed, answered and spoken as usual.

Hangs never end by themselves, so a timeout is certain to fire whatever the machine's speed; the timeouts
are short only to keep the tests quick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import sentencepiece as spm

from bizra_voice.config import HybridConfig
from bizra_voice.constants import FRAME_SIZE, TOKENIZER_FILENAME
from bizra_voice.hybrid import AnswerTokenizer, HybridController
from bizra_voice.turns import TurnEvent
from tests._tiny import tiny_checkpoint
from tests.test_hybrid_controller import StandInLive, pieces_of, settle, types, until

HANG = "<hang: this call never returns>"
SHORT_S = 0.05  # the timeouts under test (the stand-ins hang forever, so these always expire)
ANSWER = "Thank you for calling, how can I help you today?"
NEXT_ANSWER = "The weather is calm and clear."


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(tiny_checkpoint() / TOKENIZER_FILENAME))


@pytest.fixture(autouse=True)
def no_failed_tasks(serve_log):
    """Every error path is handled inside the turn: nothing may end up as a failed background task."""
    serve_log.set_level(logging.ERROR, logger="ray.serve")
    yield
    assert not [r for r in serve_log.records if r.levelno >= logging.ERROR], serve_log.text


class ScriptedStream:
    """Stand-in for Qwen's streamed answer (a Serve ``DeploymentResponseGenerator``): each step is a piece
    to yield, an exception to raise, or ``HANG``; ``cancel()`` is what the controller calls to stop Qwen."""

    def __init__(self, steps: list) -> None:
        self.steps = list(steps)
        self.cancelled = False

    def __aiter__(self) -> ScriptedStream:
        return self

    async def __anext__(self) -> str:
        if not self.steps:
            raise StopAsyncIteration
        step = self.steps.pop(0)
        if step == HANG:
            await asyncio.Event().wait()
        if isinstance(step, BaseException):
            raise step
        return step

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class ScriptedCalls:
    """Stand-ins for ModeRouter.decide_turn, QwenKnowledge.answer and Transcriber.transcribe: one scripted
    behaviour per call, in order (a mode name, a transcript dict, an exception, or ``HANG``)."""

    routes: list = field(default_factory=list)
    answers: list = field(default_factory=list)
    transcripts: list = field(default_factory=list)
    streams: list[ScriptedStream] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)

    async def route(self, requested, text, previous, typed) -> dict:
        step = self.routes.pop(0) if self.routes else "hybrid"
        if step == HANG:
            await asyncio.Event().wait()
        if isinstance(step, BaseException):
            raise step
        return {"type": "router.decision", "mode": step, "requested": requested,
                "reason": f"scripted router: {step}"}

    def answer(self, question, context, persona) -> ScriptedStream:
        self.questions.append(question)
        stream = ScriptedStream(self.answers.pop(0) if self.answers else pieces_of(NEXT_ANSWER))
        self.streams.append(stream)
        return stream

    async def transcribe(self, pcm, sample_rate) -> dict:
        step = self.transcripts.pop(0) if self.transcripts else {"text": "And the weather?", "ms": 1.0}
        if step == HANG:
            await asyncio.Event().wait()
        if isinstance(step, BaseException):
            raise step
        return step


def controller(sp, calls: ScriptedCalls, **config) -> tuple[HybridController, StandInLive, list[dict]]:
    live = StandInLive(sp)
    events: list[dict] = []

    async def emit(event):
        events.append(event)

    settings = {"route_timeout_s": SHORT_S, "transcribe_timeout_s": SHORT_S, "answer_timeout_s": 30.0, **config}
    ctl = HybridController(live=live, emit=emit, requested_mode="hybrid", tokenizer=sp, route=calls.route,
                           answer=calls.answer, transcribe=calls.transcribe, persona="You are a test persona.",
                           deadline_ms=30_000.0, config=HybridConfig(**settings), detect_turns=False)
    return ctl, live, events


def of_turn(events: list[dict], turn_id: int, kind: str | None = None) -> list[dict]:
    return [e for e in events if e.get("turn_id") == turn_id and (kind is None or e["type"] == kind)]


async def speak_until_ended(ctl: HybridController, live: StandInLive, events: list[dict], turn_id: int,
                            max_frames: int = 400) -> list[int]:
    """Run frames (the model picks a word every frame) until the turn's guidance ends; the tokens said."""
    said: list[int] = []
    for _ in range(max_frames):
        if of_turn(events, turn_id, "guidance.ended"):
            return said
        frame = live.tick(model_word=True)
        ctl.on_output(frame)
        said += [frame.text_token] if frame.guided else []
        await settle()
    raise AssertionError(f"turn {turn_id} was never finished: {types(events)}")


async def ask(ctl: HybridController, text: str) -> None:
    await ctl.on_user_text(None, {"type": "user.text", "text": text})


async def next_turn_is_answered(ctl, live, events, sp, turn_id: int) -> None:
    """The session goes on: the next typed question is routed, answered and spoken in full."""
    await ask(ctl, "And the weather?")
    await until(lambda: [e for e in of_turn(events, turn_id, "knowledge.answer") if e["done"]])
    said = await speak_until_ended(ctl, live, events, turn_id)
    decision = of_turn(events, turn_id, "router.decision")
    assert [d["mode"] for d in decision] == ["hybrid"], decision
    ended = of_turn(events, turn_id, "guidance.ended")[0]
    assert ended["cancelled"] is False and ended["reason"] == "spoken"
    assert said == _tokens(sp, NEXT_ANSWER)


def _tokens(sp, text: str) -> list[int]:
    splitter = AnswerTokenizer(sp)
    return splitter.feed(text) + splitter.flush()


@pytest.mark.parametrize("failure, detail", [(HANG, "TimeoutError"), (RuntimeError("router replica died"),
                                                                      "RuntimeError")], ids=["hangs", "raises"])
def test_router_timeout_or_failure_keeps_the_turn_standalone(sp, failure, detail):
    calls = ScriptedCalls(routes=[failure, "hybrid"])

    async def scenario():
        ctl, live, events = controller(sp, calls)
        await ask(ctl, "What is the capital of France?")
        await until(lambda: of_turn(events, 1, "router.decision"))
        await next_turn_is_answered(ctl, live, events, sp, 2)
        await ctl.close()
        return ctl, events

    ctl, events = asyncio.run(scenario())
    assert [e["type"] for e in of_turn(events, 1)] == ["transcript.user", "router.decision"]
    decision = of_turn(events, 1, "router.decision")[0]
    assert decision["mode"] == "standalone" and decision["requested"] == "hybrid"
    assert decision["reason"] == f"this turn stays standalone: the router is unavailable ({detail})"
    assert decision["route_ms"] >= 0
    assert calls.questions == ["And the weather?"]  # Qwen was never asked the first question
    assert [t.route for t in ctl.memory.turns if t.role == "user"] == ["standalone", "hybrid"]


@pytest.mark.parametrize("steps, why, stopped", [
    ([], "the knowledge model (Qwen) returned an empty answer", False),
    ([RuntimeError("Qwen replica died")], "the knowledge model (Qwen) failed (RuntimeError)", True),
    ([HANG], "the knowledge model (Qwen) gave no first token within the 50 ms deadline", True),
], ids=["empty", "raises", "hangs"])
def test_empty_failing_or_late_answer_falls_back_to_standalone(sp, steps, why, stopped):
    calls = ScriptedCalls(answers=[steps])

    async def scenario():
        ctl, live, events = controller(sp, calls)
        if steps == [HANG]:
            ctl.deadline_ms = SHORT_S * 1000.0
        await ask(ctl, "What is the capital of France?")
        await until(lambda: len(of_turn(events, 1, "router.decision")) == 2)
        ctl.deadline_ms = 30_000.0
        await next_turn_is_answered(ctl, live, events, sp, 2)
        await ctl.close()
        return ctl, events

    ctl, events = asyncio.run(scenario())
    first = of_turn(events, 1)
    assert [e["type"] for e in first] == ["transcript.user", "router.decision", "router.decision"]
    assert first[1]["mode"] == "hybrid"
    assert first[2] == {"type": "router.decision", "mode": "standalone", "requested": "hybrid", "fallback": True,
                        "turn_id": 1, "reason": f"this turn stays standalone: {why}"}
    assert calls.streams[0].cancelled is stopped  # a stream that ended by itself needs no cancel
    assert ctl.memory.turns[0].route == "standalone"


@pytest.mark.parametrize("stall, cut", [
    (HANG, "the knowledge model (Qwen) was still answering after 0.05 s; the answer ends there"),
    (RuntimeError("Qwen replica died"),
     "the knowledge model (Qwen) failed mid-answer (RuntimeError); the answer ends there"),
], ids=["hangs", "raises"])
def test_answer_that_stalls_or_fails_midway_ends_with_what_was_said(sp, stall, cut):
    """Qwen gives its first words, then hangs past ``answer_timeout_s`` or fails: the answer ends with the
    words that arrived (``knowledge.answer`` done, with why it was cut), they are spoken, the turn ends."""
    calls = ScriptedCalls(answers=[["Thank you ", "for calling, ", stall, "never sent "]])

    async def scenario():
        ctl, live, events = controller(sp, calls, answer_timeout_s=SHORT_S)
        await ask(ctl, "What is the capital of France?")
        await until(lambda: [e for e in of_turn(events, 1, "knowledge.answer") if e["done"]])
        said = await speak_until_ended(ctl, live, events, 1)
        ctl.config = ctl.config.model_copy(update={"answer_timeout_s": 30.0})
        await next_turn_is_answered(ctl, live, events, sp, 2)
        await ctl.close()
        return events, said

    events, said = asyncio.run(scenario())
    answers = of_turn(events, 1, "knowledge.answer")
    assert [e["delta"] for e in answers if not e["done"]] == ["Thank you ", "for calling, "]
    done = answers[-1]
    assert done["done"] is True and done["text"] == "Thank you for calling," and done["cut"] == cut
    assert calls.streams[0].cancelled is True
    assert said == done["tokens"] == _tokens(sp, "Thank you for calling,")
    ended = of_turn(events, 1, "guidance.ended")[0]
    assert ended["cancelled"] is False and ended["said_tokens"] == ended["total_tokens"] == len(said)


def test_a_complete_answer_is_not_marked_cut(sp):
    calls = ScriptedCalls(answers=[pieces_of(ANSWER)])

    async def scenario():
        ctl, live, events = controller(sp, calls)
        await ask(ctl, "Hello?")
        await until(lambda: [e for e in of_turn(events, 1, "knowledge.answer") if e["done"]])
        await ctl.close()
        return events

    done = of_turn(asyncio.run(scenario()), 1, "knowledge.answer")[-1]
    assert done["text"] == ANSWER and "cut" not in done


def test_a_new_turn_supersedes_the_answer_being_spoken(sp):
    long_answer = "one two three four five six seven eight nine ten " * 3
    calls = ScriptedCalls(answers=[pieces_of(long_answer), pieces_of(NEXT_ANSWER)])

    async def scenario():
        ctl, live, events = controller(sp, calls)
        await ask(ctl, "Count to thirty please?")
        await until(lambda: [e for e in of_turn(events, 1, "knowledge.answer") if e["done"]])
        said_first = []
        for _ in range(5):
            frame = live.tick(model_word=True)
            ctl.on_output(frame)
            said_first += [frame.text_token] if frame.guided else []
            await settle()
        await ask(ctl, "And the weather?")
        await until(lambda: of_turn(events, 1, "guidance.ended") and
                    [e for e in of_turn(events, 2, "knowledge.answer") if e["done"]])
        said_second = await speak_until_ended(ctl, live, events, 2)
        await ctl.close()
        return events, said_first, said_second

    events, said_first, said_second = asyncio.run(scenario())
    ended = of_turn(events, 1, "guidance.ended")[0]
    assert ended["cancelled"] is True and ended["reason"] == "superseded by a new user turn"
    assert ended["said_tokens"] == len(said_first) == 5 < ended["total_tokens"]
    # the first answer stops where it was; the second is said in full, nothing of the first after it
    assert said_second == _tokens(sp, NEXT_ANSWER)
    assert of_turn(events, 2, "guidance.ended")[0]["reason"] == "spoken"


def test_a_new_turn_while_qwen_is_still_thinking_stops_that_answer(sp):
    """The first question's answer has not started when the second arrives: Qwen's stream for it is
    cancelled (it would otherwise keep generating for nobody), nothing more is said about turn 1."""
    calls = ScriptedCalls(answers=[[HANG], pieces_of(NEXT_ANSWER)])

    async def scenario():
        ctl, live, events = controller(sp, calls)
        await ask(ctl, "What is the capital of France?")
        await until(lambda: calls.streams and of_turn(events, 1, "router.decision"))
        await ask(ctl, "And the weather?")
        await until(lambda: [e for e in of_turn(events, 2, "knowledge.answer") if e["done"]])
        said = await speak_until_ended(ctl, live, events, 2)
        await ctl.close()
        return events, said

    events, said = asyncio.run(scenario())
    assert calls.streams[0].cancelled is True
    assert [e["type"] for e in of_turn(events, 1)] == ["transcript.user", "router.decision"]
    assert said == _tokens(sp, NEXT_ANSWER)


def spoken_turn(seconds: float = 0.64) -> TurnEvent:
    audio = np.full(int(seconds / 0.08) * FRAME_SIZE, 0.2, np.float32)
    return TurnEvent("turn.end", time.perf_counter(), audio, seconds * 1000.0, "silence")


@pytest.mark.parametrize("failure, detail", [(HANG, "timed out"), (OSError("transcriber unreachable"), "OSError")],
                         ids=["hangs", "raises"])
def test_transcriber_timeout_or_failure_is_told_and_the_next_turn_is_heard(sp, failure, detail):
    calls = ScriptedCalls(transcripts=[failure, {"text": "And the weather?", "ms": 3.0}])

    async def scenario():
        ctl, live, events = controller(sp, calls)
        ctl.on_turn_event(spoken_turn(), "item_1")
        await until(lambda: "transcript.error" in types(events))
        ctl.on_turn_event(spoken_turn(), "item_2")
        await until(lambda: [e for e in of_turn(events, 1, "knowledge.answer") if e["done"]])
        said = await speak_until_ended(ctl, live, events, 1)
        await ctl.close()
        return events, said

    events, said = asyncio.run(scenario())
    assert events[0] == {"type": "transcript.error", "reason": f"the transcriber failed ({detail})",
                         "audio_s": 0.64, "item_id": "item_1"}
    heard = events[1]
    assert heard["type"] == "transcript.user" and heard["item_id"] == "item_2" and heard["turn_id"] == 1
    assert heard["text"] == "And the weather?" and heard["source"] == "speech"
    assert said == _tokens(sp, NEXT_ANSWER)


def test_empty_transcript_is_told_and_nothing_is_routed(sp):
    """Whisper heard nothing it could write down: the client gets the empty final transcript (no turn id,
    there is no turn) and the router is not asked; the next turn is heard as usual."""
    calls = ScriptedCalls(transcripts=[{"text": "  ", "ms": 2.0}, {"text": "And the weather?", "ms": 3.0}])

    async def scenario():
        ctl, live, events = controller(sp, calls)
        ctl.on_turn_event(spoken_turn(), "item_1")
        await until(lambda: "transcript.user" in types(events))
        ctl.on_turn_event(spoken_turn(), "item_2")
        await until(lambda: of_turn(events, 1, "router.decision"))
        await ctl.close()
        return events

    events = asyncio.run(scenario())
    empty = events[0]
    assert empty["type"] == "transcript.user" and empty["text"] == "" and empty["final"] is True
    assert empty["item_id"] == "item_1" and "turn_id" not in empty and empty["model_ms"] == 2.0
    assert types(events)[1:3] == ["transcript.user", "router.decision"]
    assert events[1]["item_id"] == "item_2" and events[2]["turn_id"] == 1
