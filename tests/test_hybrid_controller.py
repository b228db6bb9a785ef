"""The per-session hybrid controller without Ray: scripted stand-ins for the router / Qwen / transcriber
and a stand-in engine with the real guidance semantics (answer tokens replace the model's word tokens, in
order). The SentencePiece model is the tiny checkpoint's (the real file layout), so nothing is skipped."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass

import numpy as np
import pytest
import sentencepiece as spm

from bizra_voice.config import HybridConfig
from bizra_voice.constants import FRAME_SIZE, SAMPLE_RATE, TOKENIZER_FILENAME
from bizra_voice.hybrid import AnswerTokenizer, HybridController
from bizra_voice.turns import TurnEvent
from tests._tiny import tiny_checkpoint

# Every character of it is in the tiny tokenizer's vocabulary, so what is said decodes back to the text.
ANSWER = "The weather is **calm** and clear. Thank you for calling, how can I help you today?"
SPOKEN = "The weather is calm and clear. Thank you for calling, how can I help you today?"


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(tiny_checkpoint() / TOKENIZER_FILENAME))


class StandInEngine:
    """The engine's guidance buffer of one slot: set, cancel, progress (as engine.batched does)."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.index = 0

    def set_guidance(self, slot, tokens):
        self.tokens, self.index = list(tokens), 0
        return len(tokens)

    def cancel_guidance(self, slot):
        left = len(self.tokens) - self.index
        self.tokens, self.index = [], 0
        return left

    def guidance_progress(self, slot):
        return self.index, len(self.tokens)


@dataclass
class Frame:
    text: str | None
    guided: bool
    text_token: int


class StandInLive:
    """A LiveSession on the stand-in engine; ``tick`` is one produced frame."""

    slot = 0
    closed = False

    def __init__(self, sp) -> None:
        self.engine = StandInEngine()
        self.runtime = self
        self.sp = sp

    def _submit(self, fn, *args):
        future = concurrent.futures.Future()
        future.set_result(fn(*args))
        return future

    async def guide(self, tokens):
        return self.engine.set_guidance(self.slot, tokens)

    def tick(self, model_word: bool) -> Frame:
        e = self.engine
        if model_word and e.index < len(e.tokens):
            token = e.tokens[e.index]
            e.index += 1
            return Frame(self.sp.id_to_piece(token).replace("▁", " "), True, token)
        return Frame(" hm" if model_word else None, False, 7 if model_word else 3)


def make(sp, *, mode="hybrid", answer_pieces=None, first_delay=0.0, transcribe=None, config=None,
         detect_turns=True):
    live = StandInLive(sp)
    events: list[dict] = []
    calls = {"route": [], "answer": []}

    async def emit(event):
        events.append(event)

    async def route(requested, text, previous, typed):
        calls["route"].append((requested, text, previous))
        calls.setdefault("typed", []).append(typed)
        if requested == "standalone":
            return {"type": "router.decision", "mode": "standalone", "requested": requested,
                    "reason": "standalone session: the knowledge model is never called"}
        return {"type": "router.decision", "mode": "hybrid", "requested": requested,
                "reason": "hybrid session: the turn goes to the knowledge model"}

    def answer(question, context, persona):
        calls["answer"].append((question, context, persona))

        async def stream():
            await asyncio.sleep(first_delay)
            for piece in answer_pieces or []:
                yield piece
                await asyncio.sleep(0)
        return stream()

    ctl = HybridController(live=live, emit=emit, requested_mode=mode, tokenizer=sp, route=route, answer=answer,
                           transcribe=transcribe, persona="You are a test persona.", deadline_ms=200.0,
                           config=config or HybridConfig(), detect_turns=detect_turns)
    return ctl, live, events, calls


def pieces_of(text: str) -> list[str]:
    out, word = [], ""
    for ch in text:
        if ch == " " and word:
            out.append(word + " ")
            word = ""
        else:
            word += ch
    return out + ([word] if word else [])


async def settle():
    for _ in range(20):
        await asyncio.sleep(0)


async def until(predicate, timeout_s: float = 10.0) -> None:
    """Wait for what the test is waiting for (bounded, generous: a busy machine only makes it later)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "the awaited event never came"
        await asyncio.sleep(0.005)


def types(events):
    return [e["type"] for e in events]


def test_answer_tokenizer_matches_whole_text_encoding(sp):
    splitter = AnswerTokenizer(sp)
    streamed: list[int] = []
    for piece in ["The wea", "ther is **ca", "lm** and cl", "ear. Thank you", " for calling, how can I help",
                  " you today?"]:
        streamed += splitter.feed(piece)
    streamed += splitter.flush()
    expected = [t for t in sp.encode(SPOKEN) if t not in (0, 3)]
    assert streamed == expected and len(expected) > 10
    assert AnswerTokenizer(sp).feed("word") == []  # an incomplete word waits


def test_typed_question_is_routed_answered_and_spoken_in_order(sp):
    async def scenario():
        ctl, live, events, calls = make(sp, answer_pieces=pieces_of(ANSWER))
        await ctl.on_user_text(None, {"type": "user.text", "text": "  What is the capital   of France? "})
        await settle()
        spoken = []
        for k in range(80):  # the model chooses a word on 2 frames of 3
            frame = live.tick(model_word=k % 3 != 0)
            ctl.on_output(frame)
            spoken.append(frame)
            await settle()
        await ctl.close()
        return ctl, events, calls, spoken

    ctl, events, calls, spoken = asyncio.run(scenario())
    assert types(events)[:3] == ["transcript.user", "router.decision", "knowledge.answer"]
    assert events[0] == {"type": "transcript.user", "turn_id": 1, "text": "What is the capital of France?",
                         "source": "typed", "final": True}
    decision = events[1]
    assert decision["mode"] == "hybrid" and decision["reason"] and decision["route_ms"] >= 0
    assert calls["answer"] == [("What is the capital of France?", [], "You are a test persona.")]
    assert calls["typed"] == [True]  # the router is told the turn was typed
    done = next(e for e in events if e["type"] == "knowledge.answer" and e["done"])
    assert done["text"] == ANSWER
    partial = "".join(e["delta"] for e in events if e["type"] == "knowledge.answer" and not e["done"])
    assert partial == ANSWER
    said = [f.text_token for f in spoken if f.guided]
    assert said == done["tokens"] and len(said) > 5  # all of it, once, in order
    assert "".join(sp.id_to_piece(t) for t in said).replace("▁", " ").strip() == SPOKEN
    started = next(e for e in events if e["type"] == "guidance.started")
    assert set(started["timings"]) >= {"transcribe_ms", "route_ms", "qwen_first_token_ms",
                                       "first_spoken_word_ms", "end_of_turn_to_first_word_ms"}
    ended = next(e for e in events if e["type"] == "guidance.ended")
    assert ended["cancelled"] is False and ended["said_tokens"] == ended["total_tokens"] == len(said)
    # the memory holds the question and what was said (for the next turn's context)
    ctl.memory.close_assistant()
    assert [t.role for t in ctl.memory.turns] == ["user", "assistant"]
    assert ctl.memory.turns[1].text.startswith(SPOKEN)


def test_standalone_never_calls_the_knowledge_model(sp):
    async def scenario():
        ctl, live, events, calls = make(sp, mode="standalone", answer_pieces=["no "])
        await ctl.on_user_text(None, {"type": "user.text", "text": "What is the capital of France?"})
        await settle()
        ctl.on_input_pcm(np.full(30 * FRAME_SIZE, 0.3, np.float32))  # standalone: no listening either
        await settle()
        await ctl.close()
        return events, calls

    events, calls = asyncio.run(scenario())
    assert calls["answer"] == []
    assert types(events) == ["transcript.user", "router.decision"]
    assert events[1]["mode"] == "standalone" and "never called" in events[1]["reason"]


def test_slow_first_token_falls_back_with_the_reason(sp):
    async def scenario():
        ctl, live, events, calls = make(sp, answer_pieces=["late "], first_delay=0.5)
        await ctl.on_user_text(None, {"type": "user.text", "text": "What is the capital of France?"})
        await until(lambda: len([e for e in events if e["type"] == "router.decision"]) == 2)
        await ctl.close()
        return events

    events = asyncio.run(scenario())
    decisions = [e for e in events if e["type"] == "router.decision"]
    assert [d["mode"] for d in decisions] == ["hybrid", "standalone"]
    assert decisions[1]["fallback"] is True and "200 ms deadline" in decisions[1]["reason"]
    assert "knowledge.answer" not in types(events)


def test_barge_in_cancels_the_rest_and_flushes(sp):
    long_answer = "one two three four five six seven eight nine ten " * 3

    async def scenario():
        ctl, live, events, calls = make(sp, answer_pieces=pieces_of(long_answer), transcribe=None)
        ctl.listen = True  # VAD on (a transcriber is not needed for barge-in)
        await ctl.on_user_text(None, {"type": "user.text", "text": "Count to thirty please?"})
        await settle()
        said = []
        for _ in range(8):
            frame = live.tick(True)
            ctl.on_output(frame)
            said += [frame.text_token] if frame.guided else []
            ctl.on_input_pcm(np.zeros(FRAME_SIZE, np.float32))
            await settle()
        for _ in range(3):  # the user speaks: onset after 2 loud frames
            ctl.on_input_pcm(np.full(FRAME_SIZE, 0.3, np.float32))
            await settle()
        after = [live.tick(True) for _ in range(10)]
        await ctl.close()
        return events, said, after

    events, said, after = asyncio.run(scenario())
    assert "playback.flush" in types(events)
    ended = next(e for e in events if e["type"] == "guidance.ended")
    assert ended["cancelled"] is True and ended["reason"] == "barge-in"
    assert ended["said_tokens"] == len(said) == 8 < ended["total_tokens"]
    assert not any(f.guided for f in after)


def test_client_cancel_stops_the_answer(sp):
    """Realtime ``response.cancel``: the rest of the guided answer is dropped, no flush event (the client
    asked), and nothing is left to cancel afterwards."""
    long_answer = "one two three four five six seven eight nine ten " * 3

    async def scenario():
        ctl, live, events, calls = make(sp, answer_pieces=pieces_of(long_answer))
        assert await ctl.cancel_answer("client_cancelled") is False  # nothing asked yet
        await ctl.on_user_text(None, {"type": "user.text", "text": "Count to thirty please?"})
        await settle()
        said = []
        for _ in range(6):
            frame = live.tick(True)
            ctl.on_output(frame)
            said += [frame.text_token] if frame.guided else []
            await settle()
        cancelled = await ctl.cancel_answer("client_cancelled")
        again = await ctl.cancel_answer("client_cancelled")
        await settle()
        after = [live.tick(True) for _ in range(10)]
        await ctl.close()
        return events, said, after, cancelled, again

    events, said, after, cancelled, again = asyncio.run(scenario())
    assert cancelled is True and again is False
    assert "playback.flush" not in types(events)
    ended = next(e for e in events if e["type"] == "guidance.ended")
    assert ended["cancelled"] is True and ended["reason"] == "client_cancelled"
    assert ended["said_tokens"] == len(said) == 6 < ended["total_tokens"]
    assert not any(f.guided for f in after)


def test_spoken_turn_goes_through_the_transcriber(sp):
    seen = []

    async def transcribe(pcm, sample_rate):
        seen.append((pcm.size, sample_rate))
        return {"text": "What is the capital of France?", "ms": 12.0}

    async def scenario():
        ctl, live, events, calls = make(sp, answer_pieces=pieces_of(ANSWER), transcribe=transcribe)
        t = np.arange(12 * FRAME_SIZE) / SAMPLE_RATE
        ctl.on_input_pcm((0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))
        for _ in range(8):
            ctl.on_input_pcm(np.zeros(FRAME_SIZE, np.float32))
            await settle()
        await until(lambda: "knowledge.answer" in types(events))
        await ctl.close()
        return events

    events = asyncio.run(scenario())
    assert seen and seen[0][1] == SAMPLE_RATE and seen[0][0] >= 12 * FRAME_SIZE
    transcript = events[0]
    assert transcript["type"] == "transcript.user" and transcript["source"] == "speech"
    assert transcript["text"] == "What is the capital of France?" and transcript["audio_s"] > 0.9
    assert transcript["transcribe_ms"] >= 0 and transcript["end_reason"] == "silence"
    assert types(events)[1:3] == ["router.decision", "knowledge.answer"]


def test_bad_typed_text_is_rejected(sp):
    async def scenario():
        ctl, live, events, calls = make(sp)
        await ctl.on_user_text(None, {"type": "user.text", "text": 42})
        await ctl.on_user_text(None, {"type": "user.text", "text": "   "})
        await ctl.on_user_text(None, {"type": "user.text", "text": "why " * 600})  # 2400 chars: refused, not cut
        await ctl.close()
        return events, calls

    events, calls = asyncio.run(scenario())
    assert types(events) == ["user.text.rejected"] * 3 and calls["route"] == []
    assert "2399 characters" in events[2]["reason"] and "2000" in events[2]["reason"]


def test_turns_from_the_caller_carry_its_item_id(sp):
    """The Realtime endpoint runs its own turn detector: the controller must not detect turns itself, and
    the transcript of a turn it is handed names the caller's item."""
    heard = []

    async def transcribe(pcm, sample_rate):
        heard.append(pcm.size)
        return {"text": "What is the capital of France?", "ms": 5.0}

    async def scenario():
        ctl, live, events, calls = make(sp, answer_pieces=pieces_of(ANSWER), transcribe=transcribe,
                                        detect_turns=False)
        t = np.arange(12 * FRAME_SIZE) / SAMPLE_RATE
        ctl.on_input_pcm((0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))  # ignored: no detection
        for _ in range(8):
            ctl.on_input_pcm(np.zeros(FRAME_SIZE, np.float32))
            await settle()
        assert heard == [] and events == []
        audio = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
        ctl.on_turn_event(TurnEvent("turn.end", time.perf_counter(), audio, 960.0, "commit"), "item_42")
        for _ in range(10):
            await settle()
        await ctl.close()
        return events

    events = asyncio.run(scenario())
    assert heard == [12 * FRAME_SIZE]
    transcript = events[0]
    assert transcript["type"] == "transcript.user" and transcript["item_id"] == "item_42"
    assert transcript["end_reason"] == "commit" and types(events)[1] == "router.decision"


def test_transcriber_failure_names_the_item(sp):
    async def transcribe(pcm, sample_rate):
        raise RuntimeError("replica died")

    async def scenario():
        ctl, live, events, calls = make(sp, transcribe=transcribe, detect_turns=False)
        audio = np.full(4 * FRAME_SIZE, 0.2, np.float32)
        ctl.on_turn_event(TurnEvent("turn.end", time.perf_counter(), audio, 320.0, "commit"), "item_7")
        for _ in range(5):
            await settle()
        await ctl.close()
        return events, calls

    events, calls = asyncio.run(scenario())
    assert types(events) == ["transcript.error"] and events[0]["item_id"] == "item_7"
    assert "RuntimeError" in events[0]["reason"] and calls["route"] == []
