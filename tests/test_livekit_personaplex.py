"""LiveKit's PersonaPlex realtime plugin (``livekit-plugins-nvidia[personaplex]`` 1.8.9, a real client nobody
here wrote) against the CPU dev profile, driven without a LiveKit room (an ``aiohttp`` session of our own).

Every WebSocket message the plugin sends or receives is recorded at its aiohttp session (a
``ws_response_class`` that logs and forwards), so the tests can say what crossed the wire, per connection.
The network drop is made by a small TCP proxy between plugin and server that resets both TCP connections
(RST, as a dropped link does: aiohttp then reports close code 1006) and can refuse the plugin's next
reconnect attempts.

Facts about the plugin these tests rely on (read in its source, ``realtime_model.py``): it connects to
``ws://HOST/api/chat?voice_prompt=NATF2.pt&text_prompt=...``, sends only ``0x01`` audio (one message per
80 ms: its sphn writer's pages for 1920 samples), waits for ``0x00`` before sending, logs a warning for any
kind other than 0x00/0x01/0x02, and after a drop retries (1 s, then doubling) while its previous encoder
keeps encoding into the queue of the next connection: the server then sees mid-stream Ogg pages before a
beginning-of-stream page, or a whole stream followed by a second beginning-of-stream page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import time
import urllib.request
import wave
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import pytest
from livekit import rtc
from livekit.plugins.nvidia.experimental import realtime as personaplex

from bizra_voice.constants import FRAME_SIZE, SAMPLE_RATE
from tests._ports import free_port
from tests._tiny import SPEECH_WAV

pytestmark = pytest.mark.slow

PLUGIN_LOGGER = "livekit.plugins.nvidia.experimental.realtime"
PUSH_SAMPLES = 480  # 20 ms frames, as a LiveKit room delivers microphone audio
REFERENCE_KINDS = {0x00, 0x01, 0x02}  # what the reference servers send a client that did not opt in
WAIT_S = 120.0  # bound on any wait below: generous, the CPU profile shares 2 cores


def speech_pcm16() -> np.ndarray:
    with wave.open(str(SPEECH_WAV)) as w:
        assert w.getframerate() == SAMPLE_RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


# -- what crossed the wire ------------------------------------------------------------------------------

@dataclass
class Connection:
    """One WebSocket connection of the plugin: every binary message each way, in order."""

    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    close_code: int | None = None
    closed: bool = False

    def kinds_received(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for message in self.received:
            counts[message[0]] = counts.get(message[0], 0) + 1
        return counts

    def received_of(self, kind: int) -> list[bytes]:
        return [m[1:] for m in self.received if m and m[0] == kind]

    def sent_audio(self) -> list[bytes]:
        return [m[1:] for m in self.sent if m and m[0] == 0x01]

    @property
    def handshaken(self) -> bool:
        return any(m[:1] == b"\x00" for m in self.received)


def ogg_pages(data: bytes) -> list[tuple[int, int, bytes]]:
    """(header flags, serial, first 8 body bytes) of each page in ``data``."""
    out, pos = [], 0
    while pos + 27 <= len(data):
        assert data[pos:pos + 4] == b"OggS"
        nseg = data[pos + 26]
        body = pos + 27 + nseg
        out.append((data[pos + 5], struct.unpack_from("<I", data, pos + 14)[0], data[body:body + 8]))
        pos = body + sum(data[pos + 27:body])
    return out


def stream_starts(messages: list[bytes]) -> list[int]:
    """Indices of the audio messages that carry a beginning-of-stream page."""
    return [i for i, m in enumerate(messages) if any(flags & 0x02 for flags, _, _ in ogg_pages(m))]


def recording_ws_class(connections: list[Connection]) -> type[aiohttp.ClientWebSocketResponse]:
    """An aiohttp WebSocket response class that records every binary message into a new Connection."""

    class RecordingWebSocket(aiohttp.ClientWebSocketResponse):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.record = Connection()
            connections.append(self.record)

        async def send_bytes(self, data: bytes, compress: int | None = None) -> None:
            self.record.sent.append(bytes(data))
            await super().send_bytes(data, compress)

        async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
            message = await super().receive(timeout)
            if message.type == aiohttp.WSMsgType.BINARY:
                self.record.received.append(bytes(message.data))
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                self.record.closed, self.record.close_code = True, self.close_code
            return message

    return RecordingWebSocket


# -- the plugin, driven headless -------------------------------------------------------------------------

class PluginLog(logging.Handler):
    """Every record the plugin's logger emits (its warnings are the point: "Unknown PersonaPlex message")."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@contextlib.contextmanager
def captured_plugin_log():
    logger = logging.getLogger(PLUGIN_LOGGER)
    handler, level = PluginLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class Listener:
    """Consumes what the plugin hands an agent: generations, each with an audio and a text stream."""

    def __init__(self, session: personaplex.RealtimeSession) -> None:
        self.generations = 0
        self.audio_samples = 0
        self.audio_frames_at: list[tuple[float, int]] = []  # (monotonic time, samples) per decoded chunk
        self.text: list[str] = []
        self.errors: list[object] = []
        self._tasks: set[asyncio.Task] = set()
        session.on("generation_created", self._on_generation)
        session.on("error", self.errors.append)

    def _on_generation(self, event) -> None:
        self.generations += 1
        task = asyncio.get_running_loop().create_task(self._consume(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _consume(self, event) -> None:
        async for message in event.message_stream:
            await asyncio.gather(self._audio(message.audio_stream), self._text(message.text_stream))

    async def _audio(self, stream) -> None:
        async for frame in stream:
            self.audio_samples += frame.samples_per_channel
            self.audio_frames_at.append((time.monotonic(), frame.samples_per_channel))

    async def _text(self, stream) -> None:
        async for piece in stream:
            self.text.append(piece)

    def samples_since(self, t: float) -> int:
        return sum(n for at, n in self.audio_frames_at if at >= t)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)


def describe(connections: list[Connection]) -> str:
    """Each connection's messages by kind, close code and any 0x05 reason (for a failed wait's message)."""
    return "; ".join(f"connection {i + 1}: sent {len(c.sent)}, received {c.kinds_received()}, "
                     f"close {c.close_code}, errors {[e.decode(errors='replace') for e in c.received_of(0x05)]}"
                     for i, c in enumerate(connections)) or "no connection"


async def wait_until(condition, what: str, connections: list[Connection], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what} ({describe(connections)})"
        await asyncio.sleep(0.02)


async def push_realtime(session: personaplex.RealtimeSession, pcm16: np.ndarray, *, loop: bool = False,
                        stop: asyncio.Event | None = None, unmuted: asyncio.Event | None = None) -> int:
    """Push ``pcm16`` in 20 ms frames on a real-time schedule (absolute, so pacing does not drift), looping
    until ``stop`` if asked; while ``unmuted`` is clear no frames are pushed (a muted microphone), and the
    schedule restarts when it is set again. Returns the samples pushed."""
    start, scheduled, pushed, i = time.monotonic(), 0, 0, 0
    while stop is None or not stop.is_set():
        if unmuted is not None and not unmuted.is_set():
            await unmuted.wait()
            start, scheduled = time.monotonic(), 0
        if i + PUSH_SAMPLES > pcm16.size:
            if not loop:
                break
            i = 0
        chunk = pcm16[i:i + PUSH_SAMPLES]
        session.push_audio(rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, PUSH_SAMPLES))
        i += PUSH_SAMPLES
        pushed += PUSH_SAMPLES
        scheduled += PUSH_SAMPLES
        await asyncio.sleep(max(0.0, start + scheduled / SAMPLE_RATE - time.monotonic()))
    return pushed


def free_slots(base: str) -> tuple[int, int]:
    with urllib.request.urlopen(base + "/api/health", timeout=10) as resp:
        slots = json.loads(resp.read())["slots"]
    return slots["free"], slots["total"]


async def wait_slots_free(base: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        free, total = await asyncio.to_thread(free_slots, base)
        if free == total:
            return
        assert time.monotonic() < deadline, f"slots never freed ({free}/{total})"
        await asyncio.sleep(0.2)


# -- a TCP proxy whose link can be cut --------------------------------------------------------------------

def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a dropped link or a crashed middlebox does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class DroppableProxy:
    """Forwards TCP between the plugin and the server; ``cut()`` resets every open connection both ways,
    ``refuse(n)`` resets the next ``n`` connections as soon as they are accepted."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.accepted = 0
        self.refused = 0
        self._to_refuse = 0
        self._links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> DroppableProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def refuse(self, n: int) -> None:
        self._to_refuse = n

    def cut(self) -> None:
        for client, upstream in self._links:
            _reset(client)
            _reset(upstream)
        self._links.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._to_refuse > 0:
            self._to_refuse -= 1
            self.refused += 1
            _reset(writer)
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._links.append((writer, up_writer))
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


def _port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1].split("/")[0])


# -- the tests ------------------------------------------------------------------------------------------

def test_livekit_personaplex_plugin_normal_session(cpu_server):
    """The plugin with its defaults (voice NATF2, its default persona) streams a spoken turn in real time,
    gets audio and text back, and closes; the server speaks only the reference's dialect to it (no 0x04:
    the plugin logs "Unknown PersonaPlex message type" for each)."""
    speech = speech_pcm16()

    async def scenario():
        connections: list[Connection] = []
        async with aiohttp.ClientSession(ws_response_class=recording_ws_class(connections)) as http:
            model = personaplex.RealtimeModel(base_url=cpu_server, http_session=http)
            session = model.session()
            listener = Listener(session)
            await wait_until(lambda: connections and connections[0].handshaken, "the server's handshake",
                             connections)
            handshake_at = time.monotonic()
            silence = np.zeros(SAMPLE_RATE, dtype=np.int16)  # one more second, to hear the reply's tail
            pushed = await push_realtime(session, np.concatenate([speech, silence]))
            expected_sent = pushed // FRAME_SIZE
            await wait_until(lambda: len(connections[0].sent_audio()) >= expected_sent,
                             "the plugin's last frame", connections)
            await wait_until(lambda: len(connections[0].received_of(0x01)) >= 0.9 * expected_sent,
                             "the server's audio for the turn", connections)
            await session.aclose()
            await listener.drain()
            await model.aclose()
        return connections, listener, pushed, time.monotonic() - handshake_at

    with captured_plugin_log() as log:
        connections, listener, pushed, seconds = asyncio.run(scenario())

    assert len(connections) == 1, "the plugin reconnected during a normal session"
    conn = connections[0]
    sent = conn.sent_audio()
    assert len(conn.sent) == len(sent), "the plugin sends only 0x01 audio messages"
    assert len(sent) == pushed // FRAME_SIZE
    assert stream_starts(sent) == [0] and ogg_pages(sent[0])[0][2] == b"OpusHead"
    assert conn.received[0] == b"\x00", "the first message a moshi client receives is the handshake"
    assert 0x05 not in conn.kinds_received(), conn.received_of(0x05)
    received_audio = conn.received_of(0x01)
    assert len(received_audio) >= 0.9 * len(sent), (len(received_audio), len(sent))
    assert listener.audio_samples >= 0.9 * len(sent) * FRAME_SIZE
    text_on_wire = [t.decode() for t in conn.received_of(0x02)]
    assert "".join(listener.text) == "".join(text_on_wire), "every text piece reached the agent"
    assert not listener.errors, listener.errors
    assert not [m for m in log.messages() if "Unknown PersonaPlex message type" in m], log.messages()
    assert set(conn.kinds_received()) <= REFERENCE_KINDS, conn.kinds_received()
    asyncio.run(wait_slots_free(cpu_server))
    print(f"\nlivekit personaplex normal session: {len(sent)} frames sent, {len(received_audio)} audio "
          f"frames and {len(text_on_wire)} text pieces received, kinds {conn.kinds_received()}, "
          f"{listener.generations} generations, closed by the plugin {seconds:.1f} s after the handshake")


def test_livekit_personaplex_plugin_reconnects_after_a_network_drop(cpu_server):
    """Mid-session the link is reset (RST both ways) while the user speaks. The plugin reconnects by itself
    and first sends the pages its previous encoder made meanwhile: mid-stream pages with no
    beginning-of-stream page. The server drops them and audio streams again.

    Then a second drop, during which the microphone is muted and the first reconnect attempt fails; the
    user speaks again while the plugin waits to retry, so its queue holds a whole stream (headers and all)
    of the failed attempt's encoder, followed on the next connection by a second beginning-of-stream page:
    a chained stream, which decodes too. (aiohttp retries a GET once when a fresh connection is reset
    before the response, so two resets make one failed attempt.)"""
    speech = speech_pcm16()
    frames_heard = 25  # 2 s of the server's audio on a connection counts as "streams again"

    async def scenario():
        connections: list[Connection] = []
        async with DroppableProxy(_port_of(cpu_server)) as proxy, \
                aiohttp.ClientSession(ws_response_class=recording_ws_class(connections)) as http:
            model = personaplex.RealtimeModel(base_url=f"http://127.0.0.1:{proxy.port}", http_session=http)
            session = model.session()
            listener = Listener(session)
            await wait_until(lambda: connections and connections[0].handshaken, "the first handshake",
                             connections)
            stop, unmuted = asyncio.Event(), asyncio.Event()
            unmuted.set()
            mic = asyncio.create_task(push_realtime(session, speech, loop=True, stop=stop, unmuted=unmuted))

            def streaming(n: int) -> bool:
                return len(connections) >= n and len(connections[n - 1].received_of(0x01)) >= frames_heard

            await wait_until(lambda: streaming(1), "audio on the first connection", connections)
            proxy.cut()
            await wait_until(lambda: streaming(2), "audio again after the drop", connections)
            unmuted.clear()
            proxy.refuse(2)
            proxy.cut()
            # The plugin reports each failure ("error" event) after it has discarded its queue: wait for
            # the drop's and the failed attempt's, then speak while it sleeps before its next attempt.
            await wait_until(lambda: len(listener.errors) >= 3 and proxy.refused == 2, "the failed attempt",
                             connections)
            unmuted.set()
            await wait_until(lambda: streaming(3), "audio again after the second drop", connections)
            stop.set()
            await mic
            await session.aclose()
            await listener.drain()
            await model.aclose()
        return connections, listener, proxy

    with captured_plugin_log() as log:
        connections, listener, proxy = asyncio.run(scenario())

    assert len(connections) == 3 and proxy.refused == 2, (len(connections), proxy.refused)
    for conn in connections[:2]:
        assert conn.closed and conn.close_code == 1006, conn.close_code  # cut by the proxy, not by the server
    for conn in connections[1:]:
        assert conn.handshaken
        assert len(conn.received_of(0x01)) >= frames_heard
        assert 0x05 not in conn.kinds_received(), conn.received_of(0x05)
    stale = stream_starts(connections[1].sent_audio())
    assert stale and stale[0] > 0, "the plugin first replays its previous encoder's mid-stream pages"
    chained = stream_starts(connections[2].sent_audio())
    assert len(chained) == 2 and chained[0] == 0, "a whole stream, then a second beginning-of-stream page"
    assert len(listener.errors) == 3 and all(e.recoverable for e in listener.errors), listener.errors
    assert not [m for m in log.messages() if "Unknown PersonaPlex message type" in m], log.messages()
    asyncio.run(wait_slots_free(cpu_server))
    print("\nlivekit personaplex reconnects: " + "; ".join(
        f"connection {i + 1}: {len(c.sent_audio())} frames sent (streams begin at "
        f"{stream_starts(c.sent_audio())}), {len(c.received_of(0x01))} received, kinds {c.kinds_received()}, close {c.close_code}"
        for i, c in enumerate(connections)) + f"; {len(listener.errors)} recoverable errors reported")
