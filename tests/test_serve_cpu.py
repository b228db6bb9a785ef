"""End-to-end tests of the CPU dev profile through the real Ray Serve proxy."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bizra_voice.chat_client import chat_url, run_chat
from bizra_voice.constants import FRAME_SIZE, SAMPLE_RATE

SHARED = Path(__file__).resolve().parents[2] / "shared"

pytestmark = pytest.mark.slow

WAV = SHARED / "audio" / "user_turn_en.wav"


def session_record(record_dir: Path, session_id: str, timeout_s: float = 10.0):
    """The test hook's record of a closed session (decoded input PCM, text tokens), written on close."""
    record = record_dir / f"{session_id}.npz"
    deadline = time.monotonic() + timeout_s
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return np.load(record)


def get_json(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=10) as resp:
        return json.loads(resp.read())


def user_pcm() -> np.ndarray:
    import sphn

    pcm, sr = sphn.read(str(WAV))
    assert sr == SAMPLE_RATE
    return np.asarray(pcm[0], dtype=np.float32)


def wait_free_slots(base: str, expected: int, timeout_s: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        health = get_json(base, "/api/health")
        if health["slots"]["free"] == expected or time.monotonic() > deadline:
            return health
        time.sleep(0.1)


def test_rest_endpoints(cpu_server):
    with urllib.request.urlopen(cpu_server + "/", timeout=10) as resp:
        assert resp.status == 200 and b"<html" in resp.read().lower()
    health = get_json(cpu_server, "/api/health")
    assert health["status"] == "ok" and health["cpu_dev_profile"] is True
    assert "noise" in health["warning"]
    assert health["slots"]["total"] == 4 and health["slots"]["free"] == 4
    assert health["qwen"]["healthy"] is True
    voices = get_json(cpu_server, "/api/voices")
    assert voices["default"] in [v["name"] for v in voices["voices"]]
    with urllib.request.urlopen(cpu_server + "/api/ask?q=What+is+the+capital+of+France%3F", timeout=60) as resp:
        assert resp.status == 200
        assert len(resp.read().decode("utf-8")) > 0


def test_stream_user_turn_realtime(cpu_server):
    pcm = user_pcm()
    url = chat_url(cpu_server, voice_prompt="NATM1.pt", text_prompt="You are a test persona.", seed=7)
    result = asyncio.run(run_chat(url, pcm))
    assert result.handshake_s is not None, result.errors
    assert not result.errors, result.errors
    sent = result.frames_sent
    assert sent == len(pcm) // FRAME_SIZE
    assert result.frames_received >= 0.9 * sent, (result.frames_received, sent)
    out = result.pcm
    assert out.dtype == np.float32 and out.size == result.frames_received * FRAME_SIZE
    assert np.isfinite(out).all() and np.abs(out).max() > 0
    started = result.event("session.started")
    assert started and started["cpu_dev_profile"] is True and started["voice"] == "NATM1"
    assert started["mode"] in ("standalone", "hybrid") and started["reason"]
    assert result.event("session.stats") is not None
    assert all(isinstance(p, str) for p in result.text_pieces)
    assert result.close_code == 1000
    health = wait_free_slots(cpu_server, 4)
    assert health["slots"]["free"] == 4


def test_two_concurrent_sessions_and_slot_release(cpu_server):
    pcm = user_pcm()[: 3 * SAMPLE_RATE]

    async def both():
        urls = [chat_url(cpu_server, voice_prompt=v) for v in ("NATM1", "NATF0")]
        return await asyncio.gather(*(run_chat(u, pcm) for u in urls))

    results = asyncio.run(both())
    for r in results:
        assert r.handshake_s is not None and not r.errors
        assert r.frames_received >= 0.9 * r.frames_sent
    slots = {r.event("session.started")["slot"] for r in results}
    assert len(slots) == 2
    assert wait_free_slots(cpu_server, 4)["slots"]["free"] == 4


def test_beyond_capacity_gets_1013_fast(cpu_server):
    async def scenario():
        url = chat_url(cpu_server)
        holders = [asyncio.create_task(run_chat(url, None, hold_s=6.0)) for _ in range(4)]
        deadline = time.monotonic() + 30
        while get_json(cpu_server, "/api/health")["slots"]["free"] > 0:
            assert time.monotonic() < deadline, "holders never took all slots"
            await asyncio.sleep(0.1)
        t0 = time.monotonic()
        extra = await run_chat(url, None, hold_s=0.0, handshake_timeout_s=5.0)
        told_after = time.monotonic() - t0
        held = await asyncio.gather(*holders)
        return extra, told_after, held

    extra, told_after, held = asyncio.run(scenario())
    assert extra.handshake_s is None
    assert extra.close_code == 1013, (extra.close_code, extra.errors)
    assert extra.errors and "capacity" in extra.errors[0]
    assert told_after < 1.0, told_after
    assert all(h.handshake_s is not None for h in held)
    assert wait_free_slots(cpu_server, 4)["slots"]["free"] == 4


def test_bad_params_get_1008(cpu_server):
    for params in ({"voice_prompt": "../../etc/passwd"}, {"text_temperature": "nan"}, {"voice_prompt": "NOPE"}):
        result = asyncio.run(run_chat(chat_url(cpu_server, **params), None, handshake_timeout_s=10.0))
        assert result.handshake_s is None
        assert result.close_code == 1008, (params, result.close_code, result.errors)
        assert result.errors


def test_invalid_ogg_gets_1008_and_frees_the_slot(cpu_server):
    import websockets

    from bizra_voice import protocol as P

    async def bad_audio():
        async with websockets.connect(chat_url(cpu_server), compression=None) as ws:
            assert await asyncio.wait_for(ws.recv(), 30) == b"\x00"
            await ws.send(P.audio(b"this is not an ogg stream at all, not even close"))
            messages = []
            try:
                while True:
                    messages.append(P.decode(await asyncio.wait_for(ws.recv(), 10)))
            except websockets.ConnectionClosed:
                pass
            return messages, ws.close_code

    messages, code = asyncio.run(bad_audio())
    assert code == 1008
    errors = [m.text() for m in messages if m.kind == P.Kind.ERROR]
    assert errors and "Ogg" in errors[0]
    assert wait_free_slots(cpu_server, 4)["slots"]["free"] == 4


def test_client_ping_is_echoed(cpu_server):
    import websockets

    from bizra_voice import protocol as P

    async def ping():
        async with websockets.connect(chat_url(cpu_server), compression=None) as ws:
            assert await asyncio.wait_for(ws.recv(), 30) == b"\x00"
            await ws.send(P.metadata({"type": "client.ping", "t": 123.5}))
            while True:
                msg = P.decode(await asyncio.wait_for(ws.recv(), 10))
                if msg.kind == P.Kind.METADATA and msg.json().get("type") == "client.pong":
                    return msg.json()

    assert asyncio.run(ping()) == {"type": "client.pong", "t": 123.5}


def offline_tokens(checkpoint: Path, pcm: np.ndarray, voice: str, prompt: str) -> list[int]:
    """The engine run outside Serve on ``pcm`` (one slot, frame by frame), greedy: its text tokens."""
    from bizra_voice.engine.api import SamplingParams, SessionClosed, SessionSpec
    from bizra_voice.engine.config import EngineConfig
    from bizra_voice.engine.runtime import EngineRuntime

    runtime = EngineRuntime.create(EngineConfig(checkpoint=str(checkpoint), device="cpu", dtype="float32",
                                                slots=1, default_voice="NATM1"))

    async def drive() -> list[int]:
        session = await runtime.open_session(SessionSpec(text_prompt=prompt, voice=voice,
                                                         sampling=SamplingParams(greedy=True, seed=0)))
        tokens: list[int] = []

        async def collect():
            try:
                while True:
                    tokens.append((await session.next_output()).text_token)
            except SessionClosed:
                pass

        consumer = asyncio.create_task(collect())
        ticks0 = runtime.stats()["ticks"]
        for k in range(len(pcm) // FRAME_SIZE):
            session.push_pcm(pcm[k * FRAME_SIZE:(k + 1) * FRAME_SIZE])
            while runtime.stats()["ticks"] < ticks0 + k + 1:
                await asyncio.sleep(0.001)
        await asyncio.sleep(0.3)
        await session.close()
        await consumer
        return tokens

    try:
        return asyncio.run(drive())
    finally:
        runtime.shutdown()


def test_greedy_tokens_equal_offline_engine_also_when_batched(cpu_server, cpu_args, cpu_record_dir):
    """The serving path (Ogg decode, slots, threads, framing, a second session in the batch) adds no drift."""
    pcm = user_pcm()
    prompts = {"NATM1": "You are a calm test persona.", "NATF0": "You are a cheerful test persona."}

    async def both():
        urls = [chat_url(cpu_server, voice_prompt=v, text_prompt=p, greedy=1, seed=0) for v, p in prompts.items()]
        return await asyncio.gather(run_chat(urls[0], pcm), run_chat(urls[1], pcm[: 4 * SAMPLE_RATE]))

    results = asyncio.run(both())
    checkpoint = Path(cpu_args["cache_dir"]).expanduser() / "tiny-personaplex"
    for (voice, prompt), result in zip(prompts.items(), results, strict=True):
        started = result.event("session.started")
        assert started is not None, result.errors
        data = session_record(cpu_record_dir, started["session_id"])
        served = data["text_tokens"].tolist()
        assert data["frames"].tolist() == list(range(len(served)))
        decoded = data["input_pcm"]
        assert len(served) >= 0.9 * (decoded.size // FRAME_SIZE)
        reference = offline_tokens(checkpoint, decoded, voice, prompt)
        assert served == reference[: len(served)], voice
        assert len(set(served)) > 1  # not a degenerate all-padding stream
