"""Issue 8 end to end on the CPU dev profile: /v1/realtime with the official openai client, Prometheus
metrics on Ray's metrics endpoint, consent-gated recording (through the real Serve proxy)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bizra_voice.chat_client import chat_url, run_chat
from bizra_voice.constants import FRAME_SIZE, SAMPLE_RATE
from tests.conftest import SlotHolders, wait_slots

pytestmark = pytest.mark.slow

SHARED = Path(__file__).resolve().parents[2] / "shared"
WAV = SHARED / "audio" / "user_turn_en.wav"


def user_pcm(seconds: float) -> np.ndarray:
    import sphn

    pcm, sr = sphn.read(str(WAV))
    assert sr == SAMPLE_RATE
    return np.asarray(pcm[0, : int(seconds * SAMPLE_RATE)], dtype=np.float32)


def pcm16_b64(pcm: np.ndarray) -> str:
    return base64.b64encode((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes()).decode()


async def realtime_conversation(base_url: str, pcm: np.ndarray, *, record: bool = False,
                                drain_s: float = 1.5, transcribe: bool = False,
                                g711: str | None = None, until: tuple[str, ...] = (),
                                until_timeout_s: float = 120.0) -> dict:
    """Drive /v1/realtime with the official openai package: session.update, stream audio, collect events.
    ``g711`` ("audio/pcmu" | "audio/pcma"): both directions in that telephony format, as a phone bridge would.
    After the commit it waits for every event type in ``until`` (bounded, generous), then ``drain_s``."""
    from openai import AsyncOpenAI

    ws_base = base_url.replace("http://", "ws://") + "/v1"
    client = AsyncOpenAI(api_key="dummy-key", base_url=base_url + "/v1", websocket_base_url=ws_base)
    events: list = []
    query = {"record": "1"} if record else {}
    sent = b""
    encoder = None
    audio: dict = {"output": {"voice": "NATF0"},
                   "input": {"transcription": {"model": "whisper"} if transcribe else None}}
    if g711 is not None:
        from bizra_voice.audio.g711 import G711Encoder

        encoder = G711Encoder("ulaw" if g711 == "audio/pcmu" else "alaw")
        audio["output"]["format"] = audio["input"]["format"] = {"type": g711}
    async with client.realtime.connect(model="personaplex-7b-v1", extra_query=query) as conn:
        await conn.session.update(session={
            "type": "realtime", "instructions": "You are a terse test persona.", "audio": audio,
            "mode": "standalone"})

        async def reader():
            async for event in conn:
                events.append(event)

        task = asyncio.create_task(reader())
        start = time.monotonic()
        chunk = 2 * FRAME_SIZE  # 160 ms per append, sent in real time
        for k in range(0, len(pcm), chunk):
            if encoder is None:
                await conn.input_audio_buffer.append(audio=pcm16_b64(pcm[k:k + chunk]))
            else:
                payload = encoder.encode(pcm[k:k + chunk])
                sent += payload
                await conn.input_audio_buffer.append(audio=base64.b64encode(payload).decode())
            await asyncio.sleep(max(0.0, start + (k + chunk) / SAMPLE_RATE - time.monotonic()))
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        deadline = time.monotonic() + until_timeout_s
        while not set(until) <= {e.type for e in events} and not task.done():
            assert time.monotonic() < deadline, f"no {set(until) - {e.type for e in events}} within " \
                                                f"{until_timeout_s} s: {[e.type for e in events][-10:]}"
            await asyncio.sleep(0.05)
        await asyncio.sleep(drain_s)
        await conn.close()
        await asyncio.gather(task, return_exceptions=True)
    return {"events": events, "sent": sent}


def types_of(events) -> list[str]:
    return [e.type for e in events]


def test_realtime_with_the_openai_client(cpu_server):
    pcm = user_pcm(3.0)
    out = asyncio.run(realtime_conversation(cpu_server, pcm, transcribe=True,
                                            until=("conversation.item.input_audio_transcription.completed",)))
    events = out["events"]
    kinds = types_of(events)
    assert kinds[0] == "session.created", kinds[:5]
    updated = [e for e in events if e.type == "session.updated"]
    assert updated and updated[0].session.instructions == "You are a terse test persona."
    assert updated[0].session.audio.output.voice == "NATF0"
    assert "error" not in kinds, [e for e in events if e.type == "error"]
    assert "input_audio_buffer.committed" in kinds
    deltas = [e for e in events if e.type == "response.output_audio.delta"]
    assert len(deltas) >= 10, kinds[:20]
    created = [e for e in events if e.type == "response.created"]
    assert created and deltas[0].response_id == created[0].response.id
    audio = np.frombuffer(base64.b64decode(deltas[0].delta), "<i2")
    assert audio.size == FRAME_SIZE
    transcript = [e for e in events if e.type == "response.output_audio_transcript.delta"]
    assert transcript and all(isinstance(e.delta, str) and e.delta for e in transcript)
    assert kinds.index("response.created") < kinds.index("response.output_audio.delta")
    # the assistant's item, as SDKs track the conversation: output_item.added -> content -> output_item.done
    items = [e for e in events if e.type == "response.output_item.added"]
    assert items and items[0].response_id == created[0].response.id and items[0].item.role == "assistant"
    assert deltas[0].item_id == items[0].item.id
    assert kinds.index("response.output_item.added") < kinds.index("response.content_part.added") < \
        kinds.index("response.output_audio.delta")
    # user speech -> the Transcriber deployment (tiny random Whisper here: the text itself is gibberish)
    committed = {e.item_id for e in events if e.type == "input_audio_buffer.committed"}
    heard = [e for e in events if e.type == "conversation.item.input_audio_transcription.completed"]
    assert heard and heard[0].item_id in committed and heard[0].usage.seconds > 0


def test_realtime_capacity_and_bad_events(cpu_server):
    import websockets

    total = wait_slots(cpu_server, all_free=True)["slots"]["total"]

    async def scenario():
        async with SlotHolders(chat_url(cpu_server), total) as holders:
            await holders.all_admitted()  # every measured slot is held until released
            async with websockets.connect(cpu_server.replace("http", "ws") + "/v1/realtime",
                                          compression=None) as ws:
                first = json.loads(await asyncio.wait_for(ws.recv(), 60))
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 60)
                code = ws.close_code
        # a bad event is a recoverable error: the session stays open
        async with websockets.connect(cpu_server.replace("http", "ws") + "/v1/realtime", compression=None) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] == "session.created"
            await ws.send(json.dumps({"type": "conversation.item.create", "event_id": "mine"}))
            err = json.loads(await asyncio.wait_for(ws.recv(), 60))
            await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "mode": "hybrid"}}))
            updated = json.loads(await asyncio.wait_for(ws.recv(), 60))
        return first, code, err, updated

    first, code, err, updated = asyncio.run(scenario())
    assert first["type"] == "error" and first["error"]["code"] == "server_at_capacity"
    assert code == 1013
    assert err["type"] == "error" and err["error"]["code"] == "invalid_value" and err["error"]["event_id"] == "mine"
    assert err["error"]["param"] == "item"  # conversation.item.create without its item
    assert updated["type"] == "session.updated" and updated["session"]["mode"] == "hybrid"


def scrape(node_url: str) -> dict[str, float]:
    """Sum each metric series over its labels (per metric name, with the `le` bucket kept)."""
    body = urllib.request.urlopen(node_url, timeout=10).read().decode()
    totals: dict[str, float] = {}
    for line in body.splitlines():
        if not line.startswith("ray_bizra_"):
            continue
        m = re.match(r"^(\w+)(\{.*\})?\s+([-+0-9.eEinfNa]+)$", line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        le = re.search(r'le="([^"]+)"', labels)
        key = f"{name}[le={le.group(1)}]" if le else name
        totals[key] = totals.get(key, 0.0) + value
    return totals


def metrics_url() -> str:
    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def wait_metric(url: str, pred, what: str, timeout_s: float = 90.0) -> dict[str, float]:
    """Scrape until ``pred`` holds (Ray exports metrics every few seconds; generous bound)."""
    deadline = time.monotonic() + timeout_s
    while True:
        values = scrape(url)
        if pred(values):
            return values
        assert time.monotonic() < deadline, f"metrics never showed {what}: {values}"
        time.sleep(0.5)


def test_metrics_move_during_a_session(cpu_server):
    from tests.test_reliability_serve import Streamer

    url = metrics_url()
    before = scrape(url)
    counters = ("ray_bizra_engine_tick_ms_count", "ray_bizra_handshake_ms_count",
                "ray_bizra_time_to_first_audio_ms_count", "ray_bizra_router_decisions_total")
    base = {name: before.get(name, 0.0) for name in counters}  # cumulative: only growth is this session's

    async def session_and_probe():
        streamer = Streamer(chat_url(cpu_server))  # streams until stopped: open until the metrics saw it
        started = await asyncio.wait_for(streamer.started, 120)
        during = await asyncio.to_thread(
            wait_metric, url, lambda v: v.get("ray_bizra_sessions_active", 0) >= 1
            and v.get("ray_bizra_engine_tick_ms_count", 0) > base["ray_bizra_engine_tick_ms_count"] + 5,
            "an active session and its ticks")
        streamer.stop.set()
        await asyncio.wait_for(streamer.task, 60)
        return started, during, streamer

    started, during, streamer = asyncio.run(session_and_probe())
    assert started["type"] == "session.started" and not streamer.errors, streamer.errors
    assert "ray_bizra_engine_tick_ms_bucket[le=80.0]" in during
    after = wait_metric(url, lambda v: v.get("ray_bizra_sessions_active", 1) == 0
                        and all(v.get(name, 0.0) > base[name] for name in counters),
                        "the session gone and every counter past its baseline")
    assert after["ray_bizra_engine_tick_ms_count"] >= during["ray_bizra_engine_tick_ms_count"]
    # Ray exports counters with _total; each moved past what earlier tests had left
    assert all(after[name] > base[name] for name in counters), {n: (base[n], after[n]) for n in counters}


def recording_complete(folder: Path) -> bool:
    """WAVs are streamed from the start: a recording is complete once its closing event is written."""
    events = folder / "events.jsonl"
    return events.exists() and '"recording.stopped"' in events.read_text()


def wait_folder(root: Path, session_id: str, timeout_s: float = 60.0) -> Path | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [p for p in root.glob(f"*-{session_id}") if recording_complete(p)]
        if found:
            return found[0]
        time.sleep(0.1)
    return None


def new_recordings(recordings: Path, before: set[str], timeout_s: float = 60.0) -> list[Path]:
    """Session folders that appeared since ``before`` and are complete."""
    deadline = time.monotonic() + timeout_s
    while True:
        new = [p for p in recordings.iterdir() if p.name not in before and recording_complete(p)]
        if new or time.monotonic() > deadline:
            return new
        time.sleep(0.1)


def test_recording_only_with_consent(cpu_server, cpu_recordings_dir):
    import sphn

    pcm = user_pcm(2.0)
    consent = asyncio.run(run_chat(chat_url(cpu_server, record=1), pcm))
    assert consent.handshake_s is not None, consent.errors
    assert consent.event("recording") == {"type": "recording", "on": True}
    sid = consent.event("session.started")["session_id"]
    folder = wait_folder(cpu_recordings_dir, sid)
    assert folder is not None, list(cpu_recordings_dir.iterdir())
    user, sr = sphn.read(str(folder / "user.wav"))
    assistant, _ = sphn.read(str(folder / "assistant.wav"))
    assert sr == SAMPLE_RATE
    assert abs(user.shape[-1] - pcm.size) <= FRAME_SIZE  # everything the engine heard
    assert assistant.shape[-1] == consent.frames_received * FRAME_SIZE
    lines = [json.loads(x) for x in (folder / "events.jsonl").read_text().splitlines()]
    kinds = [x["type"] for x in lines]
    assert kinds[0] == "recording.started" and kinds[-1] == "recording.stopped"
    assert "session.started" in kinds
    assert lines[-1]["assistant_audio_s"] == pytest.approx(consent.frames_received * 0.08, abs=1e-3)

    before = sorted(p.name for p in cpu_recordings_dir.iterdir())
    no_consent = asyncio.run(run_chat(chat_url(cpu_server), pcm[: SAMPLE_RATE]))
    assert no_consent.event("recording") == {"type": "recording", "on": False}
    # A recording starts with its session; once the server has released the slot, that session is over.
    wait_slots(cpu_server, all_free=True)
    assert sorted(p.name for p in cpu_recordings_dir.iterdir()) == before
    assert not list(cpu_recordings_dir.glob(f"*-{no_consent.event('session.started')['session_id']}"))


def test_realtime_recording_with_consent(cpu_server, cpu_recordings_dir):
    import sphn

    before = {p.name for p in cpu_recordings_dir.iterdir()}
    pcm = user_pcm(1.6)
    out = asyncio.run(realtime_conversation(cpu_server, pcm, record=True, drain_s=1.0))
    assert "error" not in types_of(out["events"])
    new = new_recordings(cpu_recordings_dir, before)
    assert len(new) == 1
    user, _ = sphn.read(str(new[0] / "user.wav"))
    assert abs(user.shape[-1] - pcm.size) <= FRAME_SIZE
    kinds = [json.loads(x)["type"] for x in (new[0] / "events.jsonl").read_text().splitlines()]
    assert "session.config" in kinds and "response.created" in kinds and "recording.stopped" in kinds
    config = next(json.loads(x) for x in (new[0] / "events.jsonl").read_text().splitlines()
                  if json.loads(x)["type"] == "session.config")
    assert config["session"]["instructions"] == "You are a terse test persona." and config["session"]["record"]


def test_realtime_telephony_g711_both_ways(cpu_server, cpu_recordings_dir):
    """A phone bridge's session: μ-law 8 kHz in and out. The audio the model heard (the consent recording's
    user.wav) is exactly what our G.711 decoder makes of the bytes sent; the replies are μ-law 8 kHz."""
    import sphn

    from bizra_voice.audio.g711 import G711Decoder

    before = {p.name for p in cpu_recordings_dir.iterdir()}
    pcm = user_pcm(2.4)
    out = asyncio.run(realtime_conversation(cpu_server, pcm, record=True, drain_s=1.0, g711="audio/pcmu"))
    events = out["events"]
    assert "error" not in types_of(events), [e for e in events if e.type == "error"]
    updated = [e for e in events if e.type == "session.updated"][0]
    assert updated.session.audio.input.format.type == "audio/pcmu"
    assert updated.session.audio.output.format.type == "audio/pcmu"
    deltas = [base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta"]
    assert len(deltas) >= 10
    # one byte per 8 kHz sample: ~640 bytes per 80 ms frame (the resampler hands them out unevenly)
    assert abs(sum(map(len, deltas)) - 640 * len(deltas)) <= 2 * 640, [len(d) for d in deltas[:8]]
    reply = G711Decoder("ulaw").decode(b"".join(deltas))
    assert np.isfinite(reply).all() and np.abs(reply).max() > 0
    new = new_recordings(cpu_recordings_dir, before)
    assert len(new) == 1
    heard, sr = sphn.read(str(new[0] / "user.wav"))
    expected = G711Decoder("ulaw").decode(out["sent"])
    n = min(heard.shape[-1], expected.size)
    assert sr == SAMPLE_RATE and n > 0.9 * pcm.size
    assert np.abs(heard[0, :n] - expected[:n]).max() <= 2 / 32768  # the WAV is 16-bit
