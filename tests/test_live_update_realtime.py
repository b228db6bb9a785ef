"""Live persona and voice changes on /v1/realtime through Ray Serve, driven by the official openai package:
``session.update`` of ``instructions`` and ``audio.output.voice`` after audio flows is applied live and
answered with ``session.updated`` (with its ``bizra`` report); a bad voice is refused with its param; the
audio keeps streaming and the session stays open (CPU dev profile)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from bizra_voice.constants import FRAME_SIZE, SAMPLE_RATE
from tests.test_operations_serve import pcm16_b64, user_pcm

pytestmark = pytest.mark.slow

WAIT_S = 120.0  # bound of each wait (the CPU profile shares 2 cores with everything else)
BAKER = "You are a cheerful baker who talks about bread."


async def talk_and_change(base_url: str) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="dummy-key", base_url=base_url + "/v1",
                         websocket_base_url=base_url.replace("http://", "ws://") + "/v1")
    events: list = []
    pcm = np.resize(user_pcm(3.0), 120 * SAMPLE_RATE)
    async with client.realtime.connect(model="personaplex-7b-v1") as conn:
        await conn.session.update(session={"type": "realtime", "instructions": "You are a terse test persona.",
                                           "audio": {"output": {"voice": "NATM1"}}, "mode": "standalone"})

        async def reader() -> None:
            async for event in conn:
                events.append(event)

        async def streamer() -> None:
            start = time.monotonic()
            chunk = 2 * FRAME_SIZE  # 160 ms per append, in real time
            for k in range(0, len(pcm), chunk):
                await conn.input_audio_buffer.append(audio=pcm16_b64(pcm[k:k + chunk]))
                await asyncio.sleep(max(0.0, start + (k + chunk) / SAMPLE_RATE - time.monotonic()))

        read, stream = asyncio.create_task(reader()), asyncio.create_task(streamer())

        def deltas() -> int:
            return sum(1 for e in events if e.type == "response.output_audio.delta")

        async def until(predicate, what: str) -> None:
            deadline = time.monotonic() + WAIT_S
            while not predicate():
                assert not read.done(), f"the connection ended while waiting for {what}: {read}"
                assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s: {[e.type for e in events][-10:]}"
                await asyncio.sleep(0.05)

        def answer(event_id: str):
            for e in events:
                if e.type == "session.updated" and (e.model_extra or {}).get("bizra", {}).get("event_id") == event_id:
                    return e
                if e.type == "error" and e.error.event_id == event_id:
                    return e
            return None

        await until(lambda: deltas() >= 10, "audio before the changes")
        marks = {}
        for event_id, session in (("evt_persona", {"instructions": BAKER}),
                                  ("evt_voice", {"audio": {"output": {"voice": "coral"}}}),
                                  ("evt_nope", {"audio": {"output": {"voice": "NOPE"}}})):
            await conn.session.update(session={"type": "realtime", **session}, event_id=event_id)
            await until(lambda event_id=event_id: answer(event_id) is not None, f"the answer to {event_id}")
            marks[event_id] = deltas()
        await until(lambda: deltas() >= marks["evt_nope"] + 15, "audio after the changes")
        answers = {event_id: answer(event_id) for event_id in marks}
        still_open = not read.done()
        stream.cancel()
        await conn.close()
        await asyncio.gather(read, stream, return_exceptions=True)
    return {"events": events, "answers": answers, "marks": marks, "still_open": still_open}


def test_live_persona_and_voice_changes_with_the_openai_client(cpu_server):
    from openai.types.realtime import RealtimeErrorEvent, SessionUpdatedEvent

    out = asyncio.run(talk_and_change(cpu_server))
    persona, voice, nope = (out["answers"][k] for k in ("evt_persona", "evt_voice", "evt_nope"))
    print(f"\nlive changes on /v1/realtime through Serve (CPU dev profile): persona "
          f"{persona.model_extra['bizra']['prefill_ms']} ms, voice {voice.model_extra['bizra']['prefill_ms']} ms")
    assert isinstance(persona, SessionUpdatedEvent) and persona.session.instructions == BAKER
    assert persona.model_extra["bizra"]["changed"] == ["session.instructions"]
    assert persona.model_extra["bizra"]["prefill_ms"] > 0
    assert isinstance(voice, SessionUpdatedEvent) and voice.session.audio.output.voice == "coral"
    assert voice.session.instructions == BAKER  # the persona change stays
    assert voice.model_extra["bizra"] == {**voice.model_extra["bizra"], "changed": ["session.audio.output.voice"],
                                          "engine_voice": "NATF1"}
    assert isinstance(nope, RealtimeErrorEvent)
    assert (nope.error.code, nope.error.param) == ("invalid_value", "session.audio.output.voice")
    errors = [e for e in out["events"] if e.type == "error"]
    assert errors == [nope], errors  # nothing else was refused, and nothing ended the session
    assert out["still_open"]
    # the audio kept streaming through the changes: the model's frames kept coming after each answer
    assert out["marks"]["evt_persona"] >= 10
    kinds = [e.type for e in out["events"]]
    at_voice = out["events"].index(voice)
    assert kinds[at_voice:].count("response.output_audio.delta") >= 15
