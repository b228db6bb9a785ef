"""LiveKit's OpenAI Realtime plugin (``livekit-plugins-openai``, a real client nobody here wrote) against
``/v1/realtime`` on the CPU profile, driven headless (no room, no AgentSession): its default voice
(``marin``), speech streamed in real time from ``user_turn_en.wav``, ``generate_reply()`` (it waits for
``response.created`` to echo ``metadata.client_event_id``, 10 s at most), ``truncate()`` and
``interrupt()`` - without one ``error`` event, and without the server closing the session."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from bizra_voice.constants import SAMPLE_RATE

pytestmark = pytest.mark.slow

WAV = Path(__file__).resolve().parents[2] / "shared" / "audio" / "user_turn_en.wav"
CHUNK = SAMPLE_RATE // 50  # 20 ms frames, as a room's audio track delivers them


def user_pcm16() -> np.ndarray:
    import sphn

    pcm, sr = sphn.read(str(WAV))
    assert sr == SAMPLE_RATE
    return (np.clip(pcm[0], -1, 1) * 32767).astype(np.int16)


async def speak(session, pcm16: np.ndarray) -> None:
    """The user's microphone: the WAV, then silence, pushed in real time until cancelled."""
    from livekit import rtc

    loop = asyncio.get_running_loop()
    start, k = loop.time(), 0
    while True:
        at = (k * CHUNK) % (pcm16.size + 2 * SAMPLE_RATE)  # the turn, 2 s of silence, again
        chunk = pcm16[at:at + CHUNK] if at + CHUNK <= pcm16.size else np.zeros(CHUNK, np.int16)
        session.push_audio(rtc.AudioFrame(data=chunk.tobytes(), sample_rate=SAMPLE_RATE, num_channels=1,
                                          samples_per_channel=CHUNK))
        k += 1
        await asyncio.sleep(max(0.0, start + k * CHUNK / SAMPLE_RATE - loop.time()))


async def wait_event(events: list[dict], predicate, what: str, timeout_s: float = 60.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        found = [e for e in events if predicate(e)]
        if found:
            return found[0]
        assert asyncio.get_running_loop().time() < deadline, f"no {what}: {[e['type'] for e in events][-15:]}"
        await asyncio.sleep(0.05)


def test_livekit_openai_realtime_plugin(cpu_server):
    import aiohttp
    from livekit.plugins.openai.realtime import RealtimeModel
    from openai.types.realtime import RealtimeServerEvent
    from pydantic import TypeAdapter

    async def scenario():
        async with aiohttp.ClientSession() as http:
            model = RealtimeModel(base_url=cpu_server + "/v1", api_key="unused", http_session=http)
            assert model._opts.voice == "marin"  # the plugin's default, kept
            session = model.session()
            raw: list[dict] = []
            errors: list = []
            reconnects: list = []
            session.on("openai_server_event_received", raw.append)
            session.on("error", errors.append)
            session.on("session_reconnected", reconnects.append)
            mic = asyncio.create_task(speak(session, user_pcm16()))
            try:
                asked = asyncio.get_running_loop().time()
                first = await session.generate_reply()  # raises after 10 s without its response.created
                resolved_s = asyncio.get_running_loop().time() - asked
                message = await asyncio.wait_for(first.message_stream.__anext__(), 60)
                heard_ms = 0
                async for frame in message.audio_stream:  # the response's audio, as the plugin decodes it
                    heard_ms += round(frame.duration * 1000)
                    if heard_ms >= 240:
                        break
                session.truncate(message_id=message.message_id, modalities=["audio"], audio_end_ms=heard_ms)
                truncated = await wait_event(raw, lambda e: e["type"] == "conversation.item.truncated",
                                             "conversation.item.truncated")
                second = await session.generate_reply()
                assert session.has_active_generation
                session.interrupt()  # at once: the response just opened is surely still open
                cancelled = await wait_event(raw, lambda e: e["type"] == "response.done"
                                             and e["response"]["id"] == second.response_id, "the cancelled response")
                await asyncio.sleep(2.0)  # the conversation goes on after the interrupt
                alive = not session._main_atask.done()
            finally:
                mic.cancel()
                await asyncio.gather(mic, return_exceptions=True)
                await session.aclose()
            print(f"\ngenerate_reply() resolved in {resolved_s * 1000:.0f} ms")
            return raw, errors, reconnects, first, message, heard_ms, truncated, second, cancelled, alive

    raw, errors, reconnects, first, message, heard_ms, truncated, second, cancelled, alive = asyncio.run(scenario())
    kinds = [e["type"] for e in raw]
    print(f"server events: {len(raw)}, audio deltas {kinds.count('response.output_audio.delta')}, responses "
          f"{kinds.count('response.created')}")
    assert "error" not in kinds, [e for e in raw if e["type"] == "error"]
    assert not errors and not reconnects and alive
    updated = [e for e in raw if e["type"] == "session.updated"]
    assert updated and updated[0]["session"]["audio"]["output"]["voice"] == "marin"
    assert first.user_initiated and second.user_initiated
    created = next(e for e in raw if e["type"] == "response.created" and e["response"]["id"] == first.response_id)
    assert created["response"]["metadata"]["client_event_id"].startswith("response_create_")
    assert (truncated["item_id"], truncated["audio_end_ms"]) == (message.message_id, heard_ms)
    assert cancelled["response"]["status"] == "cancelled"
    assert cancelled["response"]["status_details"]["reason"] == "client_cancelled"
    assert kinds.count("response.output_audio.delta") >= 5
    validate = TypeAdapter(RealtimeServerEvent).validate_python
    for event in raw:
        if not event["type"].startswith("bizra."):
            validate(event)  # every GA event is one of the openai package's own models
