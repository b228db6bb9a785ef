"""End-to-end tests of the CPU dev profile through the real Ray Serve proxy.

The replica measures its slot count at start (``engine.slots: auto``), so tests read it from /api/health
and wait for slots by asking the server; frame counts are derived from what was sent (less what the
engine reported dropping to catch up), never from a speed.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bizra_voice.chat_client import chat_url, run_chat
from bizra_voice.constants import FRAME_SIZE, SAMPLE_RATE
from tests.conftest import (
    SlotHolders,
    frames_owed,
    get_json,
    run_chat_admitted,
    slot_total,
    wait_engine_quiet,
    wait_slots,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"

pytestmark = pytest.mark.slow

WAV = SHARED / "audio" / "user_turn_en.wav"


def session_record(record_dir: Path, session_id: str, timeout_s: float = 60.0):
    """The test hook's record of a closed session (decoded input PCM, text tokens), written on close."""
    record = record_dir / f"{session_id}.npz"
    deadline = time.monotonic() + timeout_s
    while not record.exists():
        assert time.monotonic() < deadline, f"no record of session {session_id} in {record_dir}"
        time.sleep(0.1)
    return np.load(record)  # written to a temporary name, then renamed: complete once it exists


def user_pcm() -> np.ndarray:
    import sphn

    pcm, sr = sphn.read(str(WAV))
    assert sr == SAMPLE_RATE
    return np.asarray(pcm[0], dtype=np.float32)


def all_slots_free(base: str) -> dict:
    """The server's health once every slot is free again (a closed session's slot is released after its
    socket closes: ask, do not assume)."""
    return wait_slots(base, all_free=True)


def needs_slots(base: str, count: int) -> None:
    total = slot_total(base)
    if total < count:
        pytest.skip(f"this machine's replica measured {total} slot(s) (engine.slots: auto); the test needs {count}")


def http_error(url: str, data: bytes | None = None) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as resp:
            return resp.status, {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_rest_endpoints(cpu_server):
    with urllib.request.urlopen(cpu_server + "/", timeout=10) as resp:
        assert resp.status == 200 and b"<html" in resp.read().lower()
    health = all_slots_free(cpu_server)
    assert health["status"] == "ok" and health["cpu_dev_profile"] is True and health["profile"] == "cpu-dev"
    assert "noise" in health["warning"]
    assert health["slots"]["total"] >= 1 and health["slots"]["free"] == health["slots"]["total"]
    assert health["qwen"]["healthy"] is True
    voices = get_json(cpu_server + "/api/voices")
    assert voices["default"] in [v["name"] for v in voices["voices"]]
    with urllib.request.urlopen(cpu_server + "/api/ask?q=What+is+the+capital+of+France%3F", timeout=60) as resp:
        assert resp.status == 200
        assert len(resp.read().decode("utf-8")) > 0


def test_ask_refuses_an_empty_or_too_long_question(cpu_server):
    """/api/ask: 400 with a sentence for a missing, blank or over-long question (GET or POST)."""
    for url, data in ((cpu_server + "/api/ask", None), (cpu_server + "/api/ask?q=%20%20", None),
                      (cpu_server + "/api/ask?q=" + "why" * 1334, None),  # 4002 characters
                      (cpu_server + "/api/ask", b"   "), (cpu_server + "/api/ask", ("why " * 1001).encode())):
        status, body = http_error(url, data)
        assert status == 400, (url[:80], status, body)
        assert body == {"error": "q must be a question of 1 to 4000 characters"}
    with urllib.request.urlopen(urllib.request.Request(cpu_server + "/api/ask", data=b"What is the capital?"),
                                timeout=60) as resp:  # a question in the POST body is answered
        assert resp.status == 200 and resp.read()


def test_stream_user_turn_realtime(cpu_server):
    pcm = user_pcm()
    url = chat_url(cpu_server, voice_prompt="NATM1.pt", text_prompt="You are a test persona.", seed=7)
    result = asyncio.run(run_chat_admitted(url, pcm))
    assert result.handshake_s is not None, result.errors
    assert not result.errors, result.errors
    sent = result.frames_sent
    assert sent == len(pcm) // FRAME_SIZE
    owed = frames_owed(result)  # one output per input frame the engine stepped
    assert result.frames_received >= 0.9 * owed, (result.frames_received, sent, owed)
    out = result.pcm
    assert out.dtype == np.float32 and out.size == result.frames_received * FRAME_SIZE
    assert np.isfinite(out).all() and np.abs(out).max() > 0
    started = result.event("session.started")
    assert started and started["cpu_dev_profile"] is True and started["voice"] == "NATM1"
    assert started["mode"] in ("standalone", "hybrid") and started["reason"]
    assert result.event("session.stats") is not None
    assert all(isinstance(p, str) for p in result.text_pieces)
    assert result.close_code == 1000
    all_slots_free(cpu_server)


def test_two_concurrent_sessions_and_slot_release(cpu_server):
    needs_slots(cpu_server, 2)
    wait_engine_quiet(cpu_server)  # both are admitted together (admission looks at the last 5 s of ticks)
    pcm = user_pcm()[: 3 * SAMPLE_RATE]

    async def both():
        urls = [chat_url(cpu_server, voice_prompt=v) for v in ("NATM1", "NATF0")]
        return await asyncio.gather(*(run_chat_admitted(u, pcm) for u in urls))

    results = asyncio.run(both())
    for r in results:
        assert r.handshake_s is not None and not r.errors
        assert r.frames_received >= 0.9 * frames_owed(r)
    slots = {r.event("session.started")["slot"] for r in results}
    assert len(slots) == 2
    all_slots_free(cpu_server)


def test_beyond_capacity_gets_1013_at_once(cpu_server):
    """With every measured slot held, one more session is refused with 1013 and a sentence, before any
    handshake — while the holders still hold their slots, so it cannot have waited for one to free up."""
    total = all_slots_free(cpu_server)["slots"]["total"]

    async def scenario():
        async with SlotHolders(chat_url(cpu_server), total) as holders:
            await holders.all_admitted()
            assert get_json(cpu_server + "/api/health")["slots"]["free"] == 0
            extra = await run_chat(chat_url(cpu_server), None, hold_s=0.0, handshake_timeout_s=60.0)
            still_held = holders.admitted == total and not holders.closes
        return extra, still_held, holders

    extra, still_held, holders = asyncio.run(scenario())
    assert extra.handshake_s is None
    assert extra.close_code == 1013, (extra.close_code, extra.errors)
    assert extra.errors and "capacity" in extra.errors[0] and str(total) in extra.errors[0], extra.errors
    assert still_held
    assert holders.closes == [1000] * total  # the holders were unaffected
    all_slots_free(cpu_server)


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
    all_slots_free(cpu_server)


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
        deadline = time.monotonic() + 60  # every tick delivers one frame: wait for the last one
        while len(tokens) < len(pcm) // FRAME_SIZE and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await session.close()
        await consumer
        return tokens

    try:
        return asyncio.run(drive())
    finally:
        runtime.shutdown()


def test_greedy_tokens_equal_offline_engine_also_when_batched(cpu_server, cpu_args, cpu_record_dir):
    """The serving path (Ogg decode, slots, threads, framing, a second session in the batch) adds no drift.
    The clients go in lockstep with the server (frame k after the answer to frame k-3), so a slow machine
    makes the sessions slower, never makes the engine drop input."""
    needs_slots(cpu_server, 2)
    wait_engine_quiet(cpu_server)
    pcm = user_pcm()
    prompts = {"NATM1": "You are a calm test persona.", "NATF0": "You are a cheerful test persona."}

    async def both():
        urls = [chat_url(cpu_server, voice_prompt=v, text_prompt=p, greedy=1, seed=0) for v, p in prompts.items()]
        return await asyncio.gather(run_chat_admitted(urls[0], pcm, lockstep=True),
                                    run_chat_admitted(urls[1], pcm[: 4 * SAMPLE_RATE], lockstep=True))

    results = asyncio.run(both())
    checkpoint = Path(cpu_args["cache_dir"]).expanduser() / "tiny-personaplex"
    for (voice, prompt), result in zip(prompts.items(), results, strict=True):
        started = result.event("session.started")
        assert started is not None, result.errors
        assert not result.event("session.input_dropped"), result.events
        data = session_record(cpu_record_dir, started["session_id"])
        served = data["text_tokens"].tolist()
        assert data["frames"].tolist() == list(range(len(served)))
        decoded = data["input_pcm"]
        assert len(served) >= 0.9 * (decoded.size // FRAME_SIZE)
        reference = offline_tokens(checkpoint, decoded, voice, prompt)
        assert served == reference[: len(served)], voice
        assert len(set(served)) > 1  # not a degenerate all-padding stream


def test_side_models_on_the_cpu_yield_to_the_engine():
    """What the Transcriber and QwenKnowledge replicas do first on the CPU (serve/cpu_share.py): one torch
    thread and every thread of the process niced below the engine (run in a fresh process: it is permanent)."""
    import subprocess
    import sys

    script = (
        "import os, threading, json\n"
        "from bizra_voice.serve.cpu_share import SIDE_MODEL_NICE, yield_cpu_to_the_engine\n"
        "assert yield_cpu_to_the_engine('cuda', 'gpu replica') is None\n"
        "before = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "early = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True); early.start()\n"
        "applied = yield_cpu_to_the_engine('cpu', 'side model')\n"
        "later = []\n"
        "t = threading.Thread(target=lambda: later.append(os.getpriority(os.PRIO_PROCESS, 0))); t.start(); t.join()\n"
        "import torch\n"
        "nices = [os.getpriority(os.PRIO_PROCESS, int(x)) for x in os.listdir('/proc/self/task')]\n"
        "print(json.dumps({'before': before, 'applied': applied, 'nices': nices, 'later': later[0],\n"
        "                  'threads': torch.get_num_threads(), 'expected': min(19, before + SIDE_MODEL_NICE)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["threads"] == 1 and report["applied"]["torch_threads"] == 1
    assert set(report["nices"]) == {report["expected"]} and report["later"] == report["expected"], report


def test_the_engine_replica_takes_back_the_priority_ray_lowered():
    """Ray starts workers at nice 15; the VoiceServer replica raises itself to nice 0 before its tick thread
    starts (serve/cpu_share.py) when it may (root), and keeps Ray's niceness with a warning when it may not."""
    import subprocess
    import sys

    script = (
        "import os, threading, json\n"
        "os.nice(15 - os.nice(0))\n"
        "from bizra_voice.serve.cpu_share import ENGINE_NICE, claim_cpu_for_the_engine\n"
        "early = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True); early.start()\n"
        "now = claim_cpu_for_the_engine()\n"
        "later = []\n"
        "t = threading.Thread(target=lambda: later.append(os.getpriority(os.PRIO_PROCESS, 0))); t.start(); t.join()\n"
        "nices = sorted({os.getpriority(os.PRIO_PROCESS, int(x)) for x in os.listdir('/proc/self/task')})\n"
        "print(json.dumps({'now': now, 'nices': nices, 'later': later[0], 'root': os.geteuid() == 0}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    expected = 0 if report["root"] else 15
    assert report["now"] == expected and report["nices"] == [expected] and report["later"] == expected, report
    if not report["root"]:
        assert "RAY_worker_niceness=0" in out.stderr
