"""``POST /v1/realtime/calls``: OpenAI Realtime over WebRTC, on the replica that owns the engine slot.

The client posts its SDP offer - as OpenAI's GA API takes it: ``multipart/form-data`` with an ``sdp`` part
and an optional ``session`` part (the session config, JSON), which is what the ``openai`` package's
``realtime.calls.create(sdp=..., session=...)`` sends; or the bare offer as ``application/sdp``. The answer
is ``201`` with the SDP answer (``application/sdp``) and ``Location: /v1/realtime/calls/<call_id>``. Then:

- the media flows peer to peer with this replica (aiortc: Opus over RTP/UDP, ICE, DTLS-SRTP): the
  client's track is the user's audio (``media.read_track`` -> the engine, paced as appended audio is), the
  answer's track the assistant's (``media.EngineAudioTrack``);
- the events are the WebSocket endpoint's, on the client's ``oai-events`` data channel
  (``channel.ChannelSocket``), served by the same ``RealtimeSession`` - only the audio moves to the tracks
  (no ``input_audio_buffer.append`` needed, no ``response.output_audio.delta`` sent);
- ``POST /v1/realtime/calls/<call_id>/hangup`` (or the client closing its peer connection) ends the call,
  on whichever replica the proxy routes it to (``serve/call_relay.py`` relays it to the call's owner).

Refused before any media, with a JSON ``error``: a request that is not a WebRTC offer with audio (400), no
access (401/403), a bad session config or query parameter (400), the replica draining or at capacity (503,
``Retry-After``). Later ends are told as on the WebSocket (``error`` event, then the call closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from bizra_voice.realtime import RealtimeError
from bizra_voice.realtime.client_events import parse_session_config
from bizra_voice.session_params import BadParams, SessionParams
from bizra_voice.webrtc.channel import EVENTS_LABEL, ChannelSocket
from bizra_voice.webrtc.media import EngineAudioTrack, read_track

log = logging.getLogger("ray.serve")

MAX_OFFER_BYTES = 64 * 1024


class CallRefused(Exception):
    def __init__(self, status: int, message: str, code: str, error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.error_type = status, message, code, error_type

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "2"} if self.status == 503 else None
        return JSONResponse({"error": {"type": self.error_type, "code": self.code, "message": self.message}},
                            status_code=self.status, headers=headers)


async def read_offer(request: Request) -> tuple[str, dict[str, Any] | None]:
    """The request's SDP offer and session config (None when not given)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        sdp, session = form.get("sdp"), form.get("session")
        sdp = (await sdp.read()).decode("utf-8", "replace") if hasattr(sdp, "read") else sdp
        session = (await session.read()).decode("utf-8", "replace") if hasattr(session, "read") else session
    else:
        body = await request.body()
        if len(body) > MAX_OFFER_BYTES:
            raise CallRefused(413, f"The offer is {len(body)} bytes; at most {MAX_OFFER_BYTES} are read.",
                              "offer_too_large")
        sdp, session = body.decode("utf-8", "replace"), None
    if not isinstance(sdp, str) or not sdp.lstrip().startswith("v=0") or "m=audio" not in sdp:
        raise CallRefused(400, "The request must carry a WebRTC SDP offer with an audio media section: "
                          "multipart/form-data with an `sdp` part (and optionally `session`, JSON), or the "
                          "offer itself as application/sdp.", "invalid_offer")
    if len(sdp) > MAX_OFFER_BYTES:
        raise CallRefused(413, f"The offer is {len(sdp)} bytes; at most {MAX_OFFER_BYTES} are read.",
                          "offer_too_large")
    config = None
    if session:
        try:
            config = json.loads(session)
        except ValueError:
            raise CallRefused(400, "The `session` part must be a JSON session config.", "invalid_session") from None
        if not isinstance(config, dict):
            raise CallRefused(400, "The `session` part must be a JSON object.", "invalid_session")
    return sdp, config


class RealtimeCall:
    """One call: its peer connection, its tracks, its session; ``run`` serves it and always cleans up."""

    def __init__(self, server: Any, call_id: str, pc: Any, socket: ChannelSocket, outbound: EngineAudioTrack,
                 session: Any) -> None:
        self.server, self.call_id, self.pc, self.socket = server, call_id, pc, socket
        self.outbound, self.session = outbound, session
        self.inbound: Any = None
        self._reader: asyncio.Task | None = None

    def track_arrived(self, track: Any) -> None:
        if track.kind != "audio" or self._reader is not None:
            return
        engine = self.session.engine

        def heard(pcm: Any) -> None:
            engine.want()
            try:
                engine.offer(pcm, None)
            except RealtimeError as exc:  # a backlog past the bound: the client is told, the call goes on
                asyncio.ensure_future(self._tell(exc))

        self._reader = asyncio.ensure_future(read_track(track, heard))

    async def _tell(self, exc: RealtimeError) -> None:
        with contextlib.suppress(Exception):
            await self.session.send(exc.event())

    async def run(self) -> None:
        try:
            await self.session.run()
        finally:
            if self._reader is not None:
                self._reader.cancel()
            self.outbound.stop()
            with contextlib.suppress(Exception):
                await self.pc.close()

    async def hang_up(self) -> None:
        self.socket.disconnected()


async def open_call(server: Any, request: Request, ice_servers: list[dict[str, Any]]) -> RealtimeCall:
    """Check the request, answer the offer and return the call (not yet running). Raises CallRefused."""
    from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

    from bizra_voice.serve.realtime_session import RealtimeSession
    from bizra_voice.serve.tickets import TicketsUnavailable, has_ticket, resolve_params

    query, headers = request.query_params, request.headers
    denied = server.access.check(query, headers, request.url.scheme, ticket=has_ticket(query))
    if denied is not None:
        raise CallRefused(denied.status, denied.message, "access_denied")
    if server._draining is not None:
        raise CallRefused(503, f"{server._draining}; call again to reach another replica", "server_draining",
                          "server_error")
    refusal = server.runtime.admission_refusal()
    if refusal is not None:
        server.metrics.rejected("realtime_webrtc", "capacity")
        raise CallRefused(503, server._capacity_message(refusal), "server_at_capacity", "server_error")
    sdp, config = await read_offer(request)
    try:
        params = await resolve_params(query, server.tickets, server.access)
    except BadParams as exc:
        raise CallRefused(400, str(exc), "invalid_request") from None
    except TicketsUnavailable as exc:
        raise CallRefused(503, f"The call could not be set up: {exc}; try again in a few seconds.",
                          "server_busy", "server_error") from None
    try:
        changes = parse_session_config(config) if config is not None else None
    except RealtimeError as exc:
        raise CallRefused(400, exc.message, exc.code) from None

    ice = [RTCIceServer(**server_) for server_ in ice_servers]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice or None))
    call_id = f"rtc_{secrets.token_hex(12)}"
    outbound = EngineAudioTrack()

    async def close_pc() -> None:
        await pc.close()

    socket = ChannelSocket(query, headers, close_pc)
    session = RealtimeSession(server, socket, params or SessionParams(), time.monotonic(), audio_track=outbound)
    if changes is not None:  # the call's session config, as a first session.update (an unknown voice: 400)
        try:
            session.state.commit(session.state.plan(changes))
        except RealtimeError as exc:
            await pc.close()
            raise CallRefused(400, exc.message, exc.code) from None
    call = RealtimeCall(server, call_id, pc, socket, outbound, session)

    @pc.on("datachannel")
    def _channel(channel: Any) -> None:
        if channel.label == EVENTS_LABEL:
            socket.attach(channel)

    @pc.on("track")
    def _track(track: Any) -> None:
        call.track_arrived(track)

    @pc.on("connectionstatechange")
    async def _state() -> None:
        if pc.connectionState in ("failed", "closed"):
            socket.disconnected()

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        pc.addTrack(outbound)  # on the offer's audio transceiver: the assistant's voice goes back on it
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:
        await pc.close()
        raise CallRefused(400, f"The SDP offer could not be answered ({type(exc).__name__}: {str(exc)[:200]}).",
                          "invalid_offer") from None
    return call
