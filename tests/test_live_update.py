"""Live persona and voice changes on /api/chat (serve/live_update.py): validation, and through Ray Serve."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from bizra_voice import protocol as P
from bizra_voice.chat_client import chat_url
from bizra_voice.serve.live_update import validated_update
from bizra_voice.session_params import BadParams


def test_an_update_is_validated_like_the_query_parameters():
    assert validated_update({"type": "session.update", "text_prompt": "  Be brief.  "}) == ("Be brief.", None)
    assert validated_update({"type": "session.update", "voice_prompt": "NATF1.pt"}) == (None, "NATF1")
    assert validated_update({"type": "session.update", "text_prompt": ""}) == ("", None)  # the default persona
    for bad, why in (({}, "needs text_prompt"), ({"voice_prompt": "../x"}, "voice name"),
                     ({"text_prompt": "x" * 5000}, "longer than"), ({"text_prompt": 3}, "must be a string"),
                     ({"voice_prompt": ""}, "must name a voice"), ({"mode": "hybrid"}, "not mode")):
        with pytest.raises(BadParams, match=why):
            validated_update({"type": "session.update", **bad})


async def _talk_and_change(url: str, updates: list[dict], seconds: float = 6.0) -> dict:
    """Stream noise-free speech-like audio in real time; send each update after 1.5 s, 3 s, ...; collect."""
    import websockets

    from bizra_voice.audio import OggOpusEncoder
    from bizra_voice.constants import FRAME_MS, FRAME_SIZE

    rng = np.random.default_rng(3)
    pcm = (0.05 * rng.standard_normal(int(seconds * 24000))).astype(np.float32)
    got = {"events": [], "audio": [], "texts": 0, "errors": []}
    async with websockets.connect(url, compression=None, max_size=None, open_timeout=60) as ws:
        assert (await asyncio.wait_for(ws.recv(), 120)) == P.handshake()
        start = time.monotonic()

        async def reader() -> None:
            try:
                async for raw in ws:
                    kind = raw[0]
                    if kind == P.Kind.AUDIO:
                        got["audio"].append(time.monotonic() - start)
                    elif kind == P.Kind.TEXT:
                        got["texts"] += 1
                    elif kind == P.Kind.METADATA:
                        got["events"].append((time.monotonic() - start, json.loads(raw[1:])))
                    elif kind == P.Kind.ERROR:
                        got["errors"].append(raw[1:].decode())
            except websockets.ConnectionClosed:
                pass

        task = asyncio.create_task(reader())
        encoder = OggOpusEncoder()
        pending = list(updates)
        for k in range(len(pcm) // FRAME_SIZE):
            await asyncio.sleep(max(0.0, start + k * FRAME_MS / 1000 - time.monotonic()))
            if pending and k and k % 19 == 0:
                await ws.send(P.metadata(pending.pop(0)))
            ogg = encoder.encode(pcm[k * FRAME_SIZE:(k + 1) * FRAME_SIZE])
            if ogg:
                await ws.send(P.audio(ogg))
        await asyncio.sleep(1.0)
        await ws.close()
        await task
        got["close_code"] = ws.close_code
    return got


@pytest.mark.slow
def test_persona_and_voice_change_live_without_a_reconnect(cpu_server):
    arabic = "أنت بزرا، مساعد صوتي ودود. " * 8
    updates = [
        {"type": "session.update", "text_prompt": arabic, "event_id": "u1"},
        {"type": "session.update", "voice_prompt": "NATF1", "event_id": "u2"},
        {"type": "session.update", "voice_prompt": "NOPE", "event_id": "u3"},
    ]
    # a plain moshi-protocol client (no events=1): it asked, so it gets the answers, and nothing else
    got = asyncio.run(_talk_and_change(chat_url(cpu_server, events=None), updates, seconds=7.0))
    assert not got["errors"] and got["close_code"] == 1000
    replies = {e["event_id"]: (at, e) for at, e in got["events"]}
    assert set(replies) == {"u1", "u2", "u3"}, got["events"]
    at1, first = replies["u1"]
    assert first["type"] == "session.updated" and first["changed"] == ["text_prompt"] and first["prefill_ms"] > 0
    _, second = replies["u2"]
    assert second["type"] == "session.updated" and second["changed"] == ["voice"] and second["voice"] == "NATF1"
    _, third = replies["u3"]
    assert third["type"] == "session.update.rejected" and "Unknown voice 'NOPE'" in third["reason"]
    assert all(e["type"].startswith("session.update") for _, e in got["events"])  # no other 0x04
    # the audio kept streaming through the changes: frames kept arriving after the first change
    assert sum(1 for t in got["audio"] if t > at1 + 0.5) >= 10
    assert len(got["audio"]) >= 0.8 * (7.0 / 0.08) * 0.5  # Ogg pages: about one per 2 frames
