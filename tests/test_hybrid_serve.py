"""Hybrid mode end to end on the CPU dev profile through the real Ray Serve proxy.

Tiny random models: the words are gibberish, so these check the plumbing, the events and the order of
the guided tokens in the 0x02 stream — not what is said. Every wait is for the event that matters, with a
generous bound (``WAIT_S``): a slow or busy machine makes the answers later, not different.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
from pathlib import Path

import numpy as np
import pytest

from bizra_voice import protocol as P
from bizra_voice.audio import OggOpusEncoder
from bizra_voice.chat_client import chat_url
from bizra_voice.constants import FRAME_MS, FRAME_SIZE, SAMPLE_RATE, TOKENIZER_FILENAME

SHARED = Path(__file__).resolve().parents[2] / "shared"
WAV = SHARED / "audio" / "user_turn_en.wav"
QUESTION = "What is the capital of France?"
WAIT_S = 120.0  # the bound of a wait for the server (never a budget: the test waits for the event)

pytestmark = pytest.mark.slow


def speech() -> np.ndarray:
    import sphn

    pcm, sr = sphn.read(str(WAV))
    assert sr == SAMPLE_RATE
    return np.asarray(pcm[0], np.float32)


class Conversation:
    """A scripted client: streams audio in real time (silence unless told to ``say`` something) and
    records every text piece and event in arrival order."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.log: list[tuple[str, object, float]] = []  # ("text"|"event"|"error", payload, time)
        self._queue: list[np.ndarray] = []
        self._new = asyncio.Event()

    async def __aenter__(self) -> Conversation:
        import websockets

        self.ws = await websockets.connect(self.url, compression=None, max_size=None, open_timeout=30)
        assert await asyncio.wait_for(self.ws.recv(), 60) == b"\x00"
        self._tasks = [asyncio.create_task(self._stream()), asyncio.create_task(self._read())]
        return self

    async def __aexit__(self, *exc) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ws.close()

    def say(self, pcm: np.ndarray) -> None:
        self._queue.extend(pcm[k * FRAME_SIZE:(k + 1) * FRAME_SIZE] for k in range(len(pcm) // FRAME_SIZE))

    async def _stream(self) -> None:
        encoder = OggOpusEncoder()
        silence = np.zeros(FRAME_SIZE, np.float32)
        t0 = time.monotonic()
        k = 0
        while True:
            await asyncio.sleep(max(0.0, t0 + k * FRAME_MS / 1000.0 - time.monotonic()))
            frame = self._queue.pop(0) if self._queue else silence
            ogg = encoder.encode(frame)
            if ogg:
                await self.ws.send(P.audio(ogg))
            k += 1

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = P.decode(raw, max_bytes=1 << 24)
            if msg.kind == P.Kind.TEXT:
                self.log.append(("text", msg.payload.decode("utf-8"), time.monotonic()))
            elif msg.kind == P.Kind.METADATA:
                self.log.append(("event", json.loads(msg.payload.decode("utf-8")), time.monotonic()))
            elif msg.kind == P.Kind.ERROR:
                self.log.append(("error", msg.payload.decode("utf-8"), time.monotonic()))
            self._new.set()

    async def send_event(self, event: dict) -> None:
        await self.ws.send(P.metadata(event))

    def events(self, kind: str) -> list[dict]:
        return [p for k, p, _ in self.log if k == "event" and p.get("type") == kind]

    async def wait(self, kind: str, timeout: float = WAIT_S, where=lambda e: True) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(kind) if where(e)]
            if found:
                return found[0]
            errors = [p for k, p, _ in self.log if k == "error"]
            assert not errors, errors
            assert time.monotonic() < deadline, (f"no {kind} within {timeout} s; events: "
                                                 f"{[p.get('type') for k, p, _ in self.log if k == 'event']}")
            self._new.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._new.wait(), timeout=0.2)

    def texts_since(self, kind: str) -> list[str]:
        """The 0x02 text pieces received after the first ``kind`` event."""
        t0 = next(t for k, p, t in self.log if k == "event" and p.get("type") == kind)
        return [p for k, p, t in self.log if k == "text" and t >= t0]

    async def wait_spoken(self, pieces: list[str], since: str, timeout: float = WAIT_S) -> list[str]:
        """Wait until ``pieces`` appear, in order, in the text stream after ``since`` (the last guided
        frame's 0x02 text may follow guidance.ended); return that stream."""
        deadline = time.monotonic() + timeout
        while not is_subsequence(pieces, self.texts_since(since)):
            assert time.monotonic() < deadline, first_gap(pieces, self.texts_since(since))
            self._new.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._new.wait(), timeout=0.2)
        return self.texts_since(since)


def sp_pieces(cpu_args: dict, tokens: list[int]) -> list[str]:
    import sentencepiece as spm

    model = Path(cpu_args["cache_dir"]).expanduser() / "tiny-personaplex" / TOKENIZER_FILENAME
    sp = spm.SentencePieceProcessor(model_file=str(model))
    return [sp.id_to_piece(t).replace("▁", " ") for t in tokens]


def is_subsequence(needle: list[str], hay: list[str]) -> bool:
    it = iter(hay)
    return all(any(h == n for h in it) for n in needle)


def first_gap(needle: list[str], hay: list[str]) -> str:
    pos = 0
    for i, n in enumerate(needle):
        try:
            pos = hay.index(n, pos) + 1
        except ValueError:
            return f"piece {i} {n!r} missing after {hay[max(0, pos - 5):pos + 5]!r}; needle {needle!r}"
    return "no gap"


def qwen_answers(app: str) -> int:
    from ray import serve

    return serve.get_deployment_handle("QwenKnowledge", app_name=app).status.remote().result()["answers"]


def test_typed_question_is_answered_in_the_persona_voice(cpu_server, cpu_args):
    async def scenario():
        async with Conversation(chat_url(cpu_server, mode="hybrid", seed=7, text_prompt="You are a guide.")) as c:
            await c.send_event({"type": "user.text", "text": QUESTION})
            done = await c.wait("knowledge.answer", where=lambda e: e.get("done"))
            ended = await c.wait("guidance.ended")
            # the answer's tokens appear, in order, in the 0x02 text stream after the decision
            await c.wait_spoken(sp_pieces(cpu_args, done["tokens"]), since="router.decision")
            return c, done, ended

    c, done, ended = asyncio.run(scenario())
    transcript = c.events("transcript.user")[0]
    assert transcript["text"] == QUESTION and transcript["source"] == "typed"
    decision = c.events("router.decision")[0]
    assert decision["mode"] == "hybrid" and decision["requested"] == "hybrid" and "hybrid" in decision["reason"]
    partials = [e for e in c.events("knowledge.answer") if not e["done"]]
    assert partials and "".join(e["delta"] for e in partials).split() == done["text"].split()
    assert done["text"] and done["tokens"] and set(done["timings"]) >= {"route_ms", "qwen_first_token_ms"}
    assert ended["cancelled"] is False and ended["said_tokens"] == ended["total_tokens"] == len(done["tokens"])
    assert "cut" not in done  # the whole answer arrived
    started = c.events("guidance.started")[0]["timings"]
    print("\nlatency (typed question, CPU):", json.dumps(started))


def test_standalone_session_never_calls_qwen(cpu_server):
    before = qwen_answers("bizra")

    async def scenario():
        async with Conversation(chat_url(cpu_server, mode="standalone")) as c:
            await c.send_event({"type": "user.text", "text": QUESTION})
            decision = await c.wait("router.decision")
            # The turn's decision is the last step of a standalone turn: Qwen would be asked right after
            # sending it, in the same task. So what Qwen has answered now is final for this turn.
            answers = await asyncio.to_thread(qwen_answers, "bizra")
            return c, decision, answers

    c, decision, answers = asyncio.run(scenario())
    assert decision["mode"] == "standalone" and "never called" in decision["reason"]
    assert not c.events("knowledge.answer") and not c.events("guidance.started")
    assert answers == before


def test_barge_in_stops_the_guidance(cpu_server):
    async def scenario():
        async with Conversation(chat_url(cpu_server, mode="hybrid", seed=3)) as c:
            await c.send_event({"type": "user.text", "text": "Explain, at length, how the tides work?"})
            await c.wait("guidance.started")
            c.say(speech()[: 2 * SAMPLE_RATE])  # the user talks over the answer
            flush = await c.wait("playback.flush")
            ended = await c.wait("guidance.ended")
            return flush, ended

    flush, ended = asyncio.run(scenario())
    assert flush["reason"] == "barge-in"
    assert ended["cancelled"] is True and ended["reason"] == "barge-in"
    assert 1 <= ended["said_tokens"] < ended["total_tokens"], ended


def test_spoken_turn_is_transcribed_and_routed(cpu_server):
    """A spoken question goes through the Transcriber, then the router, then Qwen. The tiny random Whisper
    may write nothing down for a turn: that turn ends at its empty transcript (no turn id, no decision:
    tests/test_hybrid_errors.py covers that path), and the user speaks again, as a user would."""

    async def scenario():
        async with Conversation(chat_url(cpu_server, mode="hybrid", seed=5)) as c:
            heard: list[dict] = []
            for _ in range(4):
                c.say(speech())
                transcript = await c.wait("transcript.user",
                                          where=lambda e: e.get("source") == "speech" and e not in heard)
                heard.append(transcript)
                if transcript["text"]:
                    break
            decision = await c.wait("router.decision", where=lambda e: e["turn_id"] == transcript.get("turn_id"))
            started = await c.wait("guidance.started", where=lambda e: e["turn_id"] == decision["turn_id"])
            return heard, decision, started

    heard, decision, started = asyncio.run(scenario())
    transcript = heard[-1]
    assert transcript["text"], f"the random Whisper wrote nothing down {len(heard)} times in a row: {heard}"
    for empty in heard[:-1]:  # an empty transcript starts no turn
        assert empty["text"] == "" and "turn_id" not in empty, empty
    for each in heard:
        assert isinstance(each["text"], str) and each["final"] is True
        # the random model talks all the time, so PersonaPlex's turn-taking may end the turn at the first pause
        assert each["audio_s"] > 0.5 and each["speech_ms"] >= 240
        assert each["end_reason"] in ("silence", "assistant") and each["transcribe_ms"] > 0
    assert decision["mode"] == "hybrid" and decision["turn_id"] == transcript["turn_id"]
    timings = started["timings"]
    assert timings["transcribe_ms"] > 0 and timings["end_of_turn_to_first_word_ms"] >= timings["transcribe_ms"]
    print("\nlatency (spoken turn, CPU):", json.dumps(timings))


def test_qwen_deadline_and_dead_replica_keep_turns_standalone(cpu_server, cpu_args):
    """A separate app whose router deadline is 1 ms, then whose Qwen replica is killed."""
    import ray
    from ray import serve

    from bizra_voice.app import build_app
    from tests.conftest import wait_ready

    args = copy.deepcopy(cpu_args)
    # 1 s status timeout, as shipped: a killed Qwen is reported unhealthy before Serve restarts it
    args["router"].update(deadline_ms=1.0, status_timeout_s=1.0)
    args["transcriber"]["enabled"] = False
    args["voice_server"]["debug_record_dir"] = None
    serve.run(build_app(args), name="bizra-fault", route_prefix="/fault", blocking=False)
    base = cpu_server + "/fault"
    try:
        wait_ready(base)

        async def one_turn() -> tuple[dict, list[dict]]:
            async with Conversation(chat_url(base, mode="hybrid")) as c:
                await c.send_event({"type": "user.text", "text": QUESTION})
                final = await c.wait("router.decision", where=lambda e: e["mode"] == "standalone")
                return final, c.events("router.decision")

        final, decisions = asyncio.run(one_turn())
        assert "deadline" in final["reason"], decisions

        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if "bizra-fault" in a["name"] and "QwenKnowledge" in a["name"]]
        assert names, "no QwenKnowledge replica found for the fault app"
        for name in names:
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        final, decisions = asyncio.run(one_turn())
        assert "unhealthy" in final["reason"], decisions
    finally:
        serve.delete("bizra-fault")


# ---- the same through /v1/realtime, driven by the official openai client ----------------------------------
def realtime_client(base_url: str):
    from openai import AsyncOpenAI

    return AsyncOpenAI(api_key="unused", base_url=base_url + "/v1",
                       websocket_base_url=base_url.replace("http://", "ws://") + "/v1")


def as_dict(event) -> dict:
    return event.to_dict() if hasattr(event, "to_dict") else dict(event)


class RealtimeConversation:
    """A scripted Realtime client: streams PCM16 in real time (silence unless told to ``say`` something) and
    records every server event, as a dict, with its arrival time."""

    def __init__(self, base_url: str, session: dict) -> None:
        self.base_url, self.session = base_url, session
        self.events: list[dict] = []
        self.arrival: list[float] = []
        self._queue: list[np.ndarray] = []

    async def __aenter__(self) -> RealtimeConversation:
        self._cm = realtime_client(self.base_url).realtime.connect(model="personaplex-7b-v1")
        self.conn = await self._cm.__aenter__()
        await self.conn.session.update(session=self.session)
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._stream())]
        return self

    async def __aexit__(self, *exc) -> None:
        self._tasks[1].cancel()
        await self.conn.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._cm.__aexit__(*exc)

    async def _read(self) -> None:
        async for event in self.conn:
            self.events.append(as_dict(event))
            self.arrival.append(time.monotonic())

    async def _stream(self) -> None:  # the model runs one frame per 80 ms of input: keep the line open
        import base64

        start, chunk = time.monotonic(), 2 * FRAME_SIZE
        for k in range(10_000):
            pcm = np.zeros(chunk, np.float32)
            if self._queue:
                pcm, self._queue[0] = self._queue[0][:chunk], self._queue[0][chunk:]
                if not self._queue[0].size:
                    self._queue.pop(0)
                pcm = np.pad(pcm, (0, chunk - pcm.size))
            data = (np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes()
            await self.conn.input_audio_buffer.append(audio=base64.b64encode(data).decode())
            await asyncio.sleep(max(0.0, start + (k + 1) * chunk / SAMPLE_RATE - time.monotonic()))

    def say(self, pcm: np.ndarray) -> None:
        self._queue.append(np.asarray(pcm, np.float32))

    async def type(self, text: str) -> None:
        await self.conn.conversation.item.create(item={"type": "message", "role": "user",
                                                       "content": [{"type": "input_text", "text": text}]})

    async def wait(self, kind: str, timeout: float = WAIT_S) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events if e["type"] == kind]
            if found:
                return found[0]
            assert not [e for e in self.events if e["type"] == "error"], self.events
            assert time.monotonic() < deadline, (f"no {kind} within {timeout} s: "
                                                 f"{[e['type'] for e in self.events if 'delta' not in e['type']]}")
            await asyncio.sleep(0.1)

    def index(self, kind: str) -> int:
        return [e["type"] for e in self.events].index(kind)

    def spoken_since(self, kind: str) -> list[str]:
        """The transcript deltas (what PersonaPlex said) received after the first ``kind`` event."""
        t0 = self.arrival[self.index(kind)]
        return [e["delta"] for e, t in zip(self.events, self.arrival, strict=False)
                if e["type"] == "response.output_audio_transcript.delta" and t >= t0]

    async def wait_spoken(self, pieces: list[str], since: str, timeout: float = WAIT_S) -> None:
        """Wait until ``pieces`` appear, in order, in what was said after ``since`` (the last guided
        frame's text follows bizra.guidance.ended)."""
        deadline = time.monotonic() + timeout
        while not is_subsequence(pieces, self.spoken_since(since)):
            assert time.monotonic() < deadline, first_gap(pieces, self.spoken_since(since))
            await asyncio.sleep(0.05)


def test_realtime_typed_question_is_answered_in_the_persona_voice(cpu_server, cpu_args):
    """A Realtime client types a question (conversation.item.create) in a hybrid session: the item is
    acknowledged, the router and Qwen answer (bizra.* events), and the answer's tokens come back, in order,
    in response.output_audio_transcript.delta: PersonaPlex spoke Qwen's words. A standalone session refuses
    typed text with an error that says why."""

    async def scenario():
        async with RealtimeConversation(cpu_server, {"type": "realtime", "instructions": "You are a guide.",
                                                     "mode": "hybrid"}) as c:
            await c.wait("session.updated")
            await c.type(QUESTION)
            await c.wait("bizra.guidance.ended")
            done = next(e for e in c.events if e["type"] == "bizra.knowledge.answer" and e.get("done"))
            await c.wait_spoken(sp_pieces(cpu_args, done["tokens"]), since="bizra.router.decision")

        async with realtime_client(cpu_server).realtime.connect(model="personaplex-7b-v1") as conn:
            await conn.session.update(session={"type": "realtime", "mode": "standalone"})
            await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": QUESTION}]})
            refused = None
            async for event in conn:
                if event.type == "error":
                    refused = as_dict(event)
                    break
        return c, refused

    c, refused = asyncio.run(scenario())
    events = c.events
    kinds = [e["type"] for e in events]
    assert "error" not in kinds
    added = [e for e in events if e["type"] == "conversation.item.added" and e["item"]["role"] == "user"]
    assert len(added) == 1 and added[0]["item"]["content"][0] == {"type": "input_text", "text": QUESTION}
    assert [e for e in events if e["type"] == "conversation.item.done" and e["item"] == added[0]["item"]]
    decision = next(e for e in events if e["type"] == "bizra.router.decision")
    assert decision["mode"] == "hybrid" and decision["requested"] == "hybrid"
    done = next(e for e in events if e["type"] == "bizra.knowledge.answer" and e.get("done"))
    ended = next(e for e in events if e["type"] == "bizra.guidance.ended")
    assert done["tokens"] and ended["cancelled"] is False and ended["said_tokens"] == len(done["tokens"])
    spoken = c.spoken_since("bizra.router.decision")
    expected = sp_pieces(cpu_args, done["tokens"])
    assert is_subsequence(expected, spoken), first_gap(expected, spoken)
    started = next(e for e in events if e["type"] == "bizra.guidance.started")
    print("\nlatency (typed question over /v1/realtime, CPU):", json.dumps(started["timings"]))
    assert refused is not None and refused["error"]["code"] == "hybrid_unavailable"
    assert "standalone" in refused["error"]["message"]


def test_realtime_barge_in_cancels_the_guided_answer(cpu_server):
    """Speech over a guided answer on /v1/realtime: speech_started, the rest of the answer is cancelled
    (bizra.guidance.ended cancelled), and no response is left open: one still playing at the flush is
    closed as cancelled/turn_detected just before the flush event."""

    async def scenario():
        async with RealtimeConversation(cpu_server, {"type": "realtime", "mode": "hybrid"}) as c:
            await c.wait("session.updated")
            await c.type("Explain, at length, how the tides work?")
            await c.wait("bizra.guidance.started")
            c.say(speech()[: 2 * SAMPLE_RATE])  # the user talks over the answer
            await c.wait("bizra.playback.flush")
            await c.wait("bizra.guidance.ended")
        return c

    c = asyncio.run(scenario())
    kinds = [e["type"] for e in c.events]
    flush_at = c.index("bizra.playback.flush")
    assert "input_audio_buffer.speech_started" in kinds[:flush_at]
    assert c.events[flush_at]["reason"] == "barge-in"
    ended = next(e for e in c.events if e["type"] == "bizra.guidance.ended")
    assert ended["cancelled"] is True and ended["reason"] == "barge-in"
    assert 1 <= ended["said_tokens"] < ended["total_tokens"], ended
    # The response playing at the barge-in is closed as cancelled/turn_detected before the flush; frames
    # that speak after the cancel may open a new one (their events can interleave with the closing ones).
    open_response, open_since, cancelled = None, None, []
    for i, event in enumerate(c.events[:flush_at]):
        if event["type"] == "response.created":
            assert open_response is None, "two responses open at once"
            open_response, open_since = event["response"]["id"], i
        elif event["type"] == "response.done":
            assert event["response"]["id"] == open_response
            if event["response"]["status"] == "cancelled":
                cancelled.append(i)
            open_response = None
    onset = kinds.index("input_audio_buffer.speech_started")
    assert len(cancelled) <= 1, cancelled
    for at in cancelled:
        done = c.events[at]["response"]
        assert at > onset and done["status_details"]["reason"] == "turn_detected", done
        closing = [e["type"] for e in c.events[onset:at] if e.get("response_id") == done["id"]
                   and e["type"].endswith(".done")]
        assert closing == ["response.output_audio.done", "response.output_audio_transcript.done",
                           "response.content_part.done", "response.output_item.done"], closing
        item = next(e["item"] for e in c.events[onset:at] if e["type"] == "conversation.item.done"
                    and e["item"]["role"] == "assistant")
        assert item["status"] == "incomplete", item
    # whatever is open at the flush was opened after the cancel (or, with nothing playing, after the onset)
    assert open_response is None or open_since > (cancelled[0] if cancelled else onset), (open_since, cancelled)
    print(f"\nresponse cancelled by the barge-in: {bool(cancelled)}; events: {kinds[flush_at - 7:flush_at + 1]}")


def test_realtime_response_cancel_stops_the_guided_answer_and_truncate_is_acknowledged(cpu_server):
    """What an SDK does when its user presses stop: ``response.cancel`` (the rest of Qwen's answer is not
    spoken) and ``conversation.item.truncate`` of the item it was playing (acknowledged)."""

    async def scenario():
        async with RealtimeConversation(cpu_server, {"type": "realtime", "mode": "hybrid"}) as c:
            await c.wait("session.updated")
            await c.type("Explain, at length, how the tides work?")
            await c.wait("bizra.guidance.started")
            await c.conn.response.cancel()
            ended = await c.wait("bizra.guidance.ended")
            playing = [e for e in c.events if e["type"] == "response.output_item.added"][-1]["item"]["id"]
            await c.conn.conversation.item.truncate(item_id=playing, content_index=0, audio_end_ms=80)
            truncated = await c.wait("conversation.item.truncated")
            return c, ended, playing, truncated

    c, ended, playing, truncated = asyncio.run(scenario())
    assert ended["cancelled"] is True and ended["reason"] == "client_cancelled"
    assert 1 <= ended["said_tokens"] < ended["total_tokens"], ended
    assert truncated["item_id"] == playing and truncated["audio_end_ms"] == 80
    assert not [e for e in c.events if e["type"] == "error"]
