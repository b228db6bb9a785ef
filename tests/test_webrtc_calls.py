"""OpenAI Realtime over WebRTC (``POST /v1/realtime/calls``) through Ray Serve, against the CPU dev profile.

Real parts on both sides: the official ``openai`` client posts the offer (``realtime.calls.create``, the
GA multipart request) and hangs up (``realtime.calls.hangup``); ``aiortc`` is the peer - it sends a speech
file on its audio track, reads the assistant's track and speaks the Realtime events on ``oai-events``.
A typed question in hybrid mode is answered and spoken; the call's slot is freed at the hang-up. Bad
offers, a bad session config, an unknown call and a full server get clear HTTP answers; a bad event on the
channel is a recoverable ``error``, as on the WebSocket.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from bizra_voice.chat_client import chat_url
from tests.conftest import SlotHolders, wait_slots

pytestmark = pytest.mark.slow

SHARED = Path(__file__).resolve().parents[2] / "shared"
SPEECH = SHARED / "audio" / "user_turn_en.wav"
WAIT_S = 120.0
QUESTION = "What is the capital of France?"


def speech_48k() -> np.ndarray:
    import soxr

    with wave.open(str(SPEECH), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
        pcm = pcm.reshape(-1, w.getnchannels()).mean(axis=1)
        rate = w.getframerate()
    return soxr.resample(pcm, rate, 48_000).astype(np.float32)


def make_speech_track():
    from aiortc.mediastreams import MediaStreamTrack

    class SpeechTrack(MediaStreamTrack):
        """The user's microphone: the speech file once, then silence, in real-time 20 ms frames."""

        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.pcm = speech_48k()
            self.pts = 0
            self.start: float | None = None

        async def recv(self):
            import av

            if self.start is None:
                self.start = time.monotonic()
            await asyncio.sleep(max(0.0, self.start + self.pts / 48_000 - time.monotonic()))
            chunk = self.pcm[self.pts:self.pts + 960]
            chunk = np.pad(chunk, (0, 960 - chunk.size))
            frame = av.AudioFrame.from_ndarray((chunk * 32767).astype(np.int16).reshape(1, -1), format="s16",
                                               layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48_000, self.pts, fractions.Fraction(1, 48_000)
            self.pts += 960
            return frame

    return SpeechTrack()


class Peer:
    """An aiortc peer with the ``oai-events`` channel: every event it got, and the audio frames it heard."""

    def __init__(self) -> None:
        from aiortc import RTCPeerConnection

        self.pc = RTCPeerConnection()
        self.channel = self.pc.createDataChannel("oai-events")
        self.events: list[dict] = []
        self.frames = 0
        self.loud_frames = 0
        self.closed = asyncio.Event()
        self.channel.on("message", lambda m: self.events.append(json.loads(m)))
        self.channel.on("close", self.closed.set)
        self.pc.addTrack(make_speech_track())
        self._readers: list[asyncio.Task] = []

        @self.pc.on("track")
        def _track(track) -> None:
            self._readers.append(asyncio.ensure_future(self._listen(track)))

    async def _listen(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            samples = frame.to_ndarray().astype(np.float32) / 32768.0
            self.frames += 1
            if float(np.sqrt(np.mean(samples * samples))) > 0.01:
                self.loud_frames += 1

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def answer(self, sdp: str) -> None:
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    def send(self, event: dict) -> None:
        self.channel.send(json.dumps(event))

    async def wait(self, where, what: str, timeout_s: float = WAIT_S) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            found = [e for e in self.events if where(e)]
            if found:
                return found[0]
            errors = [e for e in self.events if e["type"] == "error"]
            assert not errors, errors
            assert time.monotonic() < deadline, f"no {what} within {timeout_s} s: {[e['type'] for e in self.events]}"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        await self.pc.close()


def client(base_url: str):
    from openai import AsyncOpenAI

    return AsyncOpenAI(api_key="unused", base_url=base_url + "/v1")


def test_a_webrtc_call_hears_speaks_and_answers_a_typed_question(cpu_server):
    async def scenario():
        peer = Peer()
        openai = client(cpu_server)
        try:
            answer = await openai.realtime.calls.create(sdp=await peer.offer(), session={
                "type": "realtime", "instructions": "You are a geography guide.", "mode": "hybrid",
                "audio": {"output": {"voice": "NATF2"}}})
            location = answer.response.headers["location"]
            assert answer.response.status_code == 201 and answer.response.headers["content-type"].startswith(
                "application/sdp")
            await peer.answer(answer.text)
            created = await peer.wait(lambda e: e["type"] == "session.created", "session.created")
            peer.send({"type": "session.update", "event_id": "evt_up",
                       "session": {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper"}}}}})
            await peer.wait(lambda e: e["type"] == "session.updated", "session.updated")
            await peer.wait(lambda e: e["type"] == "response.output_audio_transcript.delta", "the model's words")
            peer.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]}})
            done = await peer.wait(lambda e: e["type"] == "bizra.knowledge.answer" and e.get("done"), "the answer")
            await peer.wait(lambda e: e["type"] == "bizra.guidance.ended", "the answer spoken")
            deadline = time.monotonic() + WAIT_S
            while peer.loud_frames < 50:  # the assistant's voice on the track (noise: random weights)
                assert time.monotonic() < deadline, f"{peer.frames} frames heard, {peer.loud_frames} loud"
                await asyncio.sleep(0.1)
            call_id = location.rsplit("/", 1)[1]
            await openai.realtime.calls.hangup(call_id)
            await asyncio.wait_for(peer.closed.wait(), WAIT_S)
            return peer, created, done, location
        finally:
            await peer.close()

    peer, created, done, location = asyncio.run(scenario())
    kinds = [e["type"] for e in peer.events]
    assert created["session"]["instructions"] == "You are a geography guide."
    assert created["session"]["audio"]["output"]["voice"] == "NATF2" and created["session"]["mode"] == "hybrid"
    assert "/v1/realtime/calls/rtc_" in location
    assert "response.output_audio.delta" not in kinds  # the audio is on the track
    assert "response.created" in kinds and "response.output_audio_transcript.delta" in kinds
    assert done["tokens"] and "error" not in kinds
    wait_slots(cpu_server, all_free=True)  # the hang-up freed the call's slot
    print(f"\nwebrtc call: {peer.frames} frames heard ({peer.loud_frames} loud), {len(peer.events)} events")


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, body, {"content-type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {}
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_bad_offers_and_configs_get_clear_answers(cpu_server):
    url = cpu_server + "/v1/realtime/calls"
    status, body = post(url, b"hello", "application/sdp")
    assert status == 400 and body["error"]["code"] == "invalid_offer"
    multipart = (b'--B\r\nContent-Disposition: form-data; name="session"\r\nContent-Type: application/json\r\n\r\n'
                 b'{}\r\n--B--\r\n')
    status, body = post(url, multipart, "multipart/form-data; boundary=B")
    assert status == 400 and "`sdp` part" in body["error"]["message"]
    status, body = post(url, b"v=0\r\nm=audio nonsense\r\n", "application/sdp")
    assert status == 400 and body["error"]["code"] == "invalid_offer"

    async def bad_voice():
        peer = Peer()
        try:
            with pytest.raises(Exception) as err:
                await client(cpu_server).realtime.calls.create(sdp=await peer.offer(), session={
                    "type": "realtime", "audio": {"output": {"voice": "NOPE"}}})
            return err.value
        finally:
            await peer.close()

    error = asyncio.run(bad_voice())
    assert getattr(error, "status_code", None) == 400 and "NOPE" in str(error), error
    status, body = post(cpu_server + "/v1/realtime/calls/rtc_nothing/hangup", b"", "application/json")
    assert status == 404 and body["error"]["code"] == "call_not_found"
    wait_slots(cpu_server, all_free=True)


def test_a_full_server_refuses_the_call_and_a_bad_event_is_a_recoverable_error(cpu_server):
    total = wait_slots(cpu_server, all_free=True)["slots"]["total"]

    async def full():
        async with SlotHolders(chat_url(cpu_server), total) as holders:
            await holders.all_admitted()
            peer = Peer()
            try:
                with pytest.raises(Exception) as err:
                    await client(cpu_server).realtime.calls.create(sdp=await peer.offer())
                return err.value
            finally:
                await peer.close()

    async def bad_event():
        peer = Peer()
        try:
            answer = await client(cpu_server).realtime.calls.create(sdp=await peer.offer())
            await peer.answer(answer.text)
            await peer.wait(lambda e: e["type"] == "session.created", "session.created")
            peer.send({"type": "conversation.item.delete", "event_id": "evt_del", "item_id": "x"})
            peer.channel.send("not json")
            await asyncio.sleep(0.5)
            peer.send({"type": "session.update", "event_id": "evt_ok", "session": {"type": "realtime",
                                                                                   "instructions": "Still here."}})
            deadline = time.monotonic() + WAIT_S
            while not any(e["type"] == "session.updated" for e in peer.events):
                assert time.monotonic() < deadline, [e["type"] for e in peer.events]
                await asyncio.sleep(0.05)
            return [e for e in peer.events if e["type"] == "error"]
        finally:
            await peer.close()

    refused = asyncio.run(full())
    assert getattr(refused, "status_code", None) == 503 and "capacity" in str(refused).lower(), refused
    errors = asyncio.run(bad_event())
    assert [e["error"]["code"] for e in errors] == ["unsupported_event", "invalid_json"]
    assert errors[0]["error"]["event_id"] == "evt_del"
    wait_slots(cpu_server, all_free=True)  # the peer closing its connection ended the call
