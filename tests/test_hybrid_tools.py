"""Hybrid mode with tool calls, without Ray: what the client is told while the knowledge model uses a tool.

Scripted stand-ins for the knowledge deployment's stream (text pieces and the ``tool.call`` /
``tool.result`` / ``knowledge.failed`` events it sends) and the stand-in engine of test_hybrid_controller.
Checked: tool events reach the client with the turn id and in order, the timings split the wait; a tool may
take longer than the first-token deadline (its own timeout bounds it), but a call that outlives that, a
model that says nothing after the result, or a failure, ends the turn standalone with the reason — never
a silent or stuck session: the next turn is answered as usual.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
import sentencepiece as spm

from bizra_voice.config import HybridConfig
from bizra_voice.constants import TOKENIZER_FILENAME
from bizra_voice.hybrid import HybridController
from tests._tiny import tiny_checkpoint
from tests.test_hybrid_controller import StandInLive, pieces_of, types, until
from tests.test_hybrid_errors import (
    HANG,
    NEXT_ANSWER,
    _tokens,
    ask,
    next_turn_is_answered,
    of_turn,
    speak_until_ended,
)

CALL = {"type": "tool.call", "call_id": "c1", "name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}
RESULT = {"type": "tool.result", "call_id": "c1", "name": "get_time", "ok": True, "ms": 120.0,
          "result": "21:04 on Tuesday in Asia/Tokyo"}
ANSWER = "It is four past nine in the evening in Tokyo."


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(tiny_checkpoint() / TOKENIZER_FILENAME))


@pytest.fixture(autouse=True)
def no_failed_tasks(serve_log):
    serve_log.set_level(logging.ERROR, logger="ray.serve")
    yield
    assert not [r for r in serve_log.records if r.levelno >= logging.ERROR], serve_log.text


class ScriptedKnowledge:
    """Stand-in for the knowledge deployment's ``answer(..., events=True)`` streams: each step is a text
    piece, an event dict, ``("sleep", s)``, an exception or ``HANG``; ``cancel()`` is what stops it."""

    def __init__(self, *answers: list) -> None:
        self.answers = [list(a) for a in answers]
        self.streams: list[ScriptedKnowledge.Stream] = []

    class Stream:
        def __init__(self, steps: list) -> None:
            self.steps, self.cancelled = steps, False

        def __aiter__(self):
            return self

        async def __anext__(self):
            while self.steps:
                step = self.steps.pop(0)
                if step == HANG:
                    await asyncio.Event().wait()
                if isinstance(step, tuple):
                    await asyncio.sleep(step[1])
                    continue
                if isinstance(step, BaseException):
                    raise step
                return step
            raise StopAsyncIteration

        def cancel(self) -> None:
            self.cancelled = True

    def __call__(self, question, context, persona):
        stream = self.Stream(self.answers.pop(0) if self.answers else pieces_of(NEXT_ANSWER))
        self.streams.append(stream)
        return stream


def controller(sp, knowledge: ScriptedKnowledge, *, deadline_ms: float = 30_000.0, tool_timeout_s: float = 30.0,
               label: str = "gateway tiny"):
    live = StandInLive(sp)
    events: list[dict] = []

    async def emit(event):
        events.append(event)

    async def route(requested, text, previous, typed):
        return {"type": "router.decision", "mode": "hybrid", "requested": requested, "reason": "scripted router"}

    ctl = HybridController(live=live, emit=emit, requested_mode="hybrid", tokenizer=sp, route=route,
                           answer=knowledge, transcribe=None, persona="You are a test persona.",
                           deadline_ms=deadline_ms, config=HybridConfig(), detect_turns=False,
                           knowledge_label=label, tool_timeout_s=tool_timeout_s)
    return ctl, live, events


def test_tool_events_reach_the_client_in_order_and_the_answer_is_spoken(sp):
    knowledge = ScriptedKnowledge(["One moment. ", CALL, ("sleep", 0.05), RESULT, *pieces_of(ANSWER)])

    async def scenario():
        ctl, live, events = controller(sp, knowledge)
        await ask(ctl, "What time is it in Tokyo?")
        await until(lambda: [e for e in of_turn(events, 1, "knowledge.answer") if e["done"]])
        said = await speak_until_ended(ctl, live, events, 1)
        await ctl.close()
        return events, said

    events, said = asyncio.run(scenario())
    turn = [e["type"] for e in of_turn(events, 1)]
    first_delta = turn.index("knowledge.answer")
    assert turn[:first_delta + 1] == ["transcript.user", "router.decision", "knowledge.answer"]
    assert turn.index("tool.call") < turn.index("tool.result") < turn.index("guidance.started")
    call = of_turn(events, 1, "tool.call")[0]
    assert call == {**CALL, "turn_id": 1}
    assert of_turn(events, 1, "tool.result")[0] == {**RESULT, "turn_id": 1}
    done = [e for e in of_turn(events, 1, "knowledge.answer") if e["done"]][0]
    assert done["text"] == "One moment. " + ANSWER and "cut" not in done
    assert said == _tokens(sp, "One moment. " + ANSWER)
    timings = of_turn(events, 1, "guidance.started")[0]["timings"]
    assert timings["tool_calls"] == 1 and timings["tool_ms"] == 120.0
    assert timings["tool_call_ms"] >= timings["qwen_first_token_ms"] >= 0  # "One moment." came before the call
    assert of_turn(events, 1, "guidance.ended")[0]["reason"] == "spoken"


def test_a_tool_may_take_longer_than_the_first_token_deadline(sp):
    """The deadline bounds the model's silence; while a tool works, the tool's own timeout does."""
    knowledge = ScriptedKnowledge([CALL, ("sleep", 0.3), RESULT, *pieces_of(ANSWER)])

    async def scenario():
        ctl, live, events = controller(sp, knowledge, deadline_ms=100.0, tool_timeout_s=5.0)
        await ask(ctl, "What time is it in Tokyo?")
        await until(lambda: [e for e in of_turn(events, 1, "knowledge.answer") if e["done"]])
        await ctl.close()
        return events

    events = asyncio.run(scenario())
    assert [d["mode"] for d in of_turn(events, 1, "router.decision")] == ["hybrid"]  # no fallback
    timings = [e for e in of_turn(events, 1, "knowledge.answer") if e["done"]][0]["timings"]
    assert timings["qwen_first_token_ms"] >= 300.0 - 1.0


@pytest.mark.parametrize("steps, why", [
    ([CALL, HANG], "the tool 'get_time' gave no result within 0.05 s"),
    ([CALL, RESULT, HANG], "the knowledge model (gateway tiny) gave no first token within the 100 ms deadline"),
    ([CALL, RESULT, {"type": "knowledge.failed", "reason": "unreachable (ConnectError)"}],
     "the knowledge model (gateway tiny) failed (unreachable (ConnectError))"),
    ([{"type": "knowledge.failed", "reason": "answered HTTP 502"}],
     "the knowledge model (gateway tiny) failed (answered HTTP 502)"),
], ids=["tool-outlives-its-timeout", "silent-after-the-result", "fails-after-the-tool", "fails-at-once"])
def test_a_wait_that_outlives_its_bound_falls_back_with_the_reason(sp, steps, why):
    knowledge = ScriptedKnowledge(steps)

    async def scenario():
        ctl, live, events = controller(sp, knowledge, deadline_ms=100.0, tool_timeout_s=0.05)
        await ask(ctl, "What time is it in Tokyo?")
        await until(lambda: len(of_turn(events, 1, "router.decision")) == 2)
        ctl.deadline_ms, ctl.tool_timeout_s = 30_000.0, 30.0
        await next_turn_is_answered(ctl, live, events, sp, 2)
        await ctl.close()
        return ctl, events

    ctl, events = asyncio.run(scenario())
    fallback = of_turn(events, 1, "router.decision")[1]
    assert fallback == {"type": "router.decision", "mode": "standalone", "requested": "hybrid", "fallback": True,
                        "turn_id": 1, "reason": f"this turn stays standalone: {why}"}
    assert "guidance.started" not in [e["type"] for e in of_turn(events, 1)]
    hung = HANG in steps
    assert knowledge.streams[0].cancelled is hung  # a stream that ended by itself needs no cancel
    assert ctl.memory.turns[0].route == "standalone"


def test_a_failure_after_words_were_spoken_cuts_the_answer_with_the_reason(sp):
    knowledge = ScriptedKnowledge(["Let me look. ", CALL, RESULT,
                                   {"type": "knowledge.failed", "reason": "unreachable (ConnectError)"}])

    async def scenario():
        ctl, live, events = controller(sp, knowledge)
        await ask(ctl, "What time is it in Tokyo?")
        await until(lambda: [e for e in of_turn(events, 1, "knowledge.answer") if e["done"]])
        said = await speak_until_ended(ctl, live, events, 1)
        await ctl.close()
        return events, said

    events, said = asyncio.run(scenario())
    done = [e for e in of_turn(events, 1, "knowledge.answer") if e["done"]][0]
    assert done["text"] == "Let me look." and said == _tokens(sp, "Let me look.")
    assert done["cut"] == ("the knowledge model (gateway tiny) failed mid-answer (unreachable (ConnectError)); "
                           "the answer ends there")
    assert types(of_turn(events, 1)).count("tool.result") == 1
