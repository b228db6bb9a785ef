"""VoiceServer: the FastAPI ingress and the PersonaPlex engine in one Ray Serve replica.

A session's state lives on the replica that owns its slot, so the WebSocket ends here (DESIGN §1): one
open WebSocket = one ongoing request, ``max_ongoing_requests`` = slots + a margin, and a full replica
answers 0x05 + 1013 at once instead of letting the client wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.staticfiles import StaticFiles

import bizra_voice
from bizra_voice import constants as C
from bizra_voice import protocol as P
from bizra_voice.config import CPU_DEV_WARNING, AppConfig
from bizra_voice.engine.api import AtCapacity, BadSessionRequest, EngineError, SamplingParams, SessionSpec
from bizra_voice.security import AccessPolicy, token_subprotocol
from bizra_voice.serve.backpressure import OutboundBuffer
from bizra_voice.serve.call_relay import CallRelay
from bizra_voice.serve.drain import watch_for_drain, watch_for_node_drain
from bizra_voice.serve.endings import ending_for, log_ending
from bizra_voice.serve.ws_session import ChatSession, ClientProtocolError, Outbox, SessionRecord
from bizra_voice.serve.ws_session import check_first_message as check_early_message
from bizra_voice.session_params import BadParams, SessionParams

log = logging.getLogger("ray.serve")

FALLBACK_PAGE = """<!doctype html><meta charset="utf-8"><title>BIZRA Voice</title>
<h1>BIZRA Voice</h1><p>The server is running. The web client is not installed in <code>{dir}</code>;
connect a moshi/PersonaPlex client to <code>/api/chat</code>.</p>"""


def default_client_dir() -> Path:
    return Path(bizra_voice.__file__).resolve().parents[1] / "client"


def ensure_tiny_checkpoint(folder: Path) -> Path:
    """Generate the tiny random checkpoint once per node (file lock: replicas may start together)."""
    from bizra_voice.build_once import ensure_under_lock
    from bizra_voice.tiny import ensure_tiny

    return ensure_under_lock(folder, ensure_tiny)


def _rss_mb() -> float:
    """This replica process's resident memory (Linux /proc; 0 elsewhere), for soak tests."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def replica_tag() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (unit use)
        return f"local-{os.getpid()}"


def create_app(server: VoiceServer) -> FastAPI:
    """The HTTP/WebSocket routes of one replica, bound to its ``server``."""
    app = FastAPI(title="BIZRA Voice", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def access_control(request: Request, call_next):  # REST: token + Origin (security.py)
        if "/api/" in request.url.path:  # the app may sit under a route prefix
            denied = server.access.check(request.query_params, request.headers, request.url.scheme)
            if denied is not None:
                return JSONResponse({"error": denied.message}, status_code=denied.status)
        return await call_next(request)

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return await server.health()

    @app.get("/api/voices")
    async def voices() -> dict[str, Any]:
        return server.voices()

    @app.post("/api/voices")
    async def add_voice(request: Request) -> Response:  # voices of one's own (voice_upload.py)
        return await server.add_voice(request)

    @app.delete("/api/voices/{name}")
    async def remove_voice(name: str) -> Response:
        return await server.remove_voice(name)

    @app.api_route("/api/ask", methods=["GET", "POST"])
    async def ask(request: Request) -> Response:
        return await server.ask(request)

    @app.post("/api/sessions")
    async def create_session(request: Request) -> Response:  # a session request as a ticket (serve/tickets.py)
        from bizra_voice.serve.tickets import post_session

        return await post_session(request, server.tickets, server.access,
                                  int(server.config.sessions.max_body_kb * 1024), server.replica)

    @app.websocket("/api/chat")
    async def chat(ws: WebSocket) -> None:
        await server.chat(ws)

    @app.websocket("/v1/realtime")
    async def realtime(ws: WebSocket) -> None:  # OpenAI Realtime (GA) protocol: serve/realtime_session.py
        await server.realtime(ws)

    @app.post("/v1/realtime/calls")
    async def realtime_call(request: Request) -> Response:  # the same over WebRTC: webrtc/calls.py
        return await server.realtime_call(request)

    @app.post("/v1/realtime/calls/{call_id}/hangup")
    async def hang_up(call_id: str, request: Request) -> Response:
        return await server.hang_up(call_id, request)

    @app.get("/")
    async def index(request: Request) -> Response:
        return await server.index(request)

    @app.get("/{path:path}")
    async def static_files(path: str, request: Request) -> Response:
        return await server.static.get_response(path, request.scope)

    return app


# Ray Serve calls the ingress builder in the replica right after VoiceServer.__init__ (one replica per
# process), so the routes bind to that instance and nothing of FastAPI's has to be pickled. Serve pickles
# the deployment class and this builder by value, so both reach the slot through a real module import.
_replica_server: VoiceServer | None = None


def _build_ingress() -> FastAPI:
    from bizra_voice.serve import voice_server as module

    if module._replica_server is None:
        raise RuntimeError("VoiceServer.__init__ must run before its ingress is built")
    return create_app(module._replica_server)


@serve.deployment(name="VoiceServer")
@serve.ingress(_build_ingress)
class VoiceServer:
    def __init__(self, config: dict, router=None, qwen=None, transcriber=None, tickets=None) -> None:
        import ray

        from bizra_voice.engine.runtime import EngineRuntime

        self.config = AppConfig.model_validate(config)
        self.router = router
        self.qwen = qwen
        self.transcriber = transcriber  # hybrid mode's speech-to-text (None: typed questions only)
        self.tickets = tickets  # SessionTickets: the store shared by every replica (POST /api/sessions)
        self.replica = replica_tag()
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        engine_config = self.config.engine
        if self.config.tiny_engine:
            checkpoint = ensure_tiny_checkpoint(self.config.tiny_engine_dir)
            engine_config = engine_config.model_copy(update={"checkpoint": str(checkpoint)})
        share = self.config.voice_server.num_gpus
        if engine_config.memory_fraction is None and 0 < share < 1:  # size to this replica's GPU share
            engine_config = engine_config.model_copy(update={"memory_fraction": share})
        if self.config.cpu_dev:
            log.warning(CPU_DEV_WARNING)
        from bizra_voice.serve.cpu_share import claim_cpu_for_the_engine

        claim_cpu_for_the_engine()  # before the tick thread starts: it inherits the priority
        self.runtime = EngineRuntime.create(engine_config)
        self.engine_config = engine_config
        vs = self.config.voice_server
        self.client_dir = Path(vs.client_dir) if vs.client_dir else default_client_dir()
        self.static = StaticFiles(directory=self.client_dir, html=True, check_dir=False)
        self.record_dir = Path(vs.debug_record_dir) if vs.debug_record_dir else None
        acc = self.config.access
        self.access = AccessPolicy.create(acc.token, acc.token_env, acc.allowed_origins, acc.allow_localhost_origins)
        self.voice_uploads = self._voice_uploads()  # None unless the operator enabled them (voices.uploads)
        self._open: dict[str, Outbox] = {}  # live sessions by id, told first when the replica drains
        self.calls = CallRelay(tickets, self.replica)  # WebRTC calls held here; hang-ups routed elsewhere
        self._call_tasks: set[asyncio.Task] = set()
        self._draining: str | None = None
        self._drain_watcher: asyncio.Task | None = None
        self._node_drain_watcher: asyncio.Task | None = None
        self._node_draining = False
        self._init_operations()
        if self.config.voice_server.autoscaling_config(1) is not None:
            # Serve looks this hook up on the instance; a fixed-size deployment must not have it (Ray 2.53
            # then starts its metrics pusher without an autoscaling config, and the replica fails).
            self.record_autoscaling_stats = self._autoscaling_stats
        from bizra_voice.serve import voice_server as module

        module._replica_server = self
        log.info("VoiceServer %s ready: %d slots, GPUs %s", self.replica, self.runtime.capacity, self.gpu_ids)

    async def __del__(self) -> None:
        """Serve's destructor hook (also reached when the drain watcher is unavailable)."""
        if getattr(self, "_open", None):
            await self.drain("this replica is shutting down")
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.shutdown()

    async def drain(self, reason: str) -> None:
        """Tell every open session (``session.draining``), wait ``drain_notice_s``, then close them 1001."""
        if self._draining is not None:
            return
        self._draining = reason
        notice = self.config.reliability.drain_notice_s
        log.warning("VoiceServer %s draining (%s): %d open sessions", self.replica, reason, len(self._open))
        event = {"type": "session.draining", "reason": reason, "closing_in_s": notice, "replica": self.replica}
        await asyncio.gather(*(out.event(event) for out in list(self._open.values())), return_exceptions=True)
        await asyncio.sleep(notice)
        message = f"The server ended the session: {reason}; reconnect to continue on another replica."
        await asyncio.gather(*(out.fail(message, P.CloseCode.GOING_AWAY) for out in list(self._open.values())),
                             return_exceptions=True)

    def check_health(self) -> None:
        if not self.runtime.alive:
            raise RuntimeError("the engine tick thread has stopped")
        if self._node_draining:  # Serve then replaces this replica, and Ray places the new one elsewhere
            raise RuntimeError("this replica's node is being drained")

    def _start_drain_watchers(self) -> None:
        """On the first session: watch for Serve stopping this replica, and for Ray draining its node."""
        if self._drain_watcher is not None:
            return
        self._drain_watcher = asyncio.create_task(watch_for_drain(
            lambda: self.drain("this replica is stopping (redeploy or downscale)")))

        async def node_retired() -> None:
            self._node_draining = True
            await self.drain("this node is being retired")

        self._node_drain_watcher = asyncio.create_task(watch_for_node_drain(node_retired))

    # ---- REST -------------------------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        stats = self.runtime.stats()
        body: dict[str, Any] = {
            "status": "ok",
            "profile": self.config.profile,
            "cpu_dev_profile": self.config.cpu_dev,
            "replica": self.replica,
            "gpu_ids": self.gpu_ids,
            "slots": {"total": self.runtime.capacity, "free": self.runtime.capacity - self.runtime.active_sessions,
                      "admitting": self.runtime.admission_refusal() is None,
                      **(self.runtime.sizing.to_dict() if self.runtime.sizing is not None else {})},
            "active_sessions": self.runtime.active_sessions,
            "process": {"pid": os.getpid(), "rss_mb": _rss_mb()},
            "engine": stats,
            "qwen": await self._qwen_health(),
        }
        if self.config.cpu_dev:
            body["warning"] = CPU_DEV_WARNING
        return body

    async def _qwen_health(self) -> dict[str, Any]:
        if self.router is None:
            return {"enabled": False, "healthy": False, "detail": "not deployed"}
        try:
            return await asyncio.wait_for(self.router.health.remote(), timeout=2.0)
        except Exception as exc:
            return {"enabled": True, "healthy": False, "detail": f"router unavailable ({type(exc).__name__})"}

    def voices(self) -> dict[str, Any]:
        uploads = self.voice_uploads.describe() if self.voice_uploads is not None else {"enabled": False}
        return {"voices": self.runtime.voices(), "default": self.engine_config.default_voice, "uploads": uploads}

    def _voice_uploads(self) -> Any:
        """Voices of one's own, stored in <cache_dir>/voices-custom of this node; None when off (nothing is
        read from or written to that folder then)."""
        if not self.config.voices.uploads:
            return None
        from bizra_voice.voice_upload import UploadLimits, VoiceUploads

        v = self.config.voices
        limits = UploadLimits(max_bytes=int(v.max_upload_mb * 2**20), max_seconds=v.max_seconds,
                              max_voices=v.max_voices)
        return VoiceUploads.attach(self.runtime.models, self.config.voice_uploads_dir, limits,
                                   reserved=self.config.realtime.voices)

    async def add_voice(self, request: Request) -> Response:
        """``POST /api/voices?name=<name>`` with the recording as the body: 201 and the new voice, or why not."""
        from bizra_voice.voice_upload import UPLOADS_OFF, UploadRefused

        if self.voice_uploads is None:
            return JSONResponse({"error": UPLOADS_OFF}, status_code=403)
        try:
            voice = await self.voice_uploads.upload(request.query_params.get("name"), request.stream(),
                                                    request.headers.get("content-length"))
        except UploadRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        log.info("voice %r uploaded (%.1f s, %s ms)", voice["name"], voice["seconds"], voice["processing_ms"])
        return JSONResponse(voice, status_code=201)

    async def remove_voice(self, name: str) -> Response:
        from bizra_voice.voice_upload import UPLOADS_OFF, UploadRefused

        if self.voice_uploads is None:
            return JSONResponse({"error": UPLOADS_OFF}, status_code=403)
        try:
            return JSONResponse(await asyncio.to_thread(self.voice_uploads.remove, name))
        except UploadRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def ask(self, request: Request) -> Response:
        question = request.query_params.get("q")
        if question is None and request.method == "POST":
            body = await request.body()
            question = body.decode("utf-8", errors="replace")
        question = (question or "").strip()
        if not question or len(question) > 4000:
            return JSONResponse({"error": "q must be a question of 1 to 4000 characters"}, status_code=400)
        if self.qwen is None:
            return JSONResponse({"error": "the knowledge model is not deployed"}, status_code=503)
        stream = self.qwen.options(stream=True).answer.remote(question, [])

        async def pieces():
            async for piece in stream:
                yield piece.encode("utf-8")

        return StreamingResponse(pieces(), media_type="text/plain; charset=utf-8")

    async def index(self, request: Request) -> Response:
        if (self.client_dir / "index.html").is_file():
            return await self.static.get_response("index.html", request.scope)
        return HTMLResponse(FALLBACK_PAGE.format(dir=self.client_dir))

    # ---- WebSocket ----------------------------------------------------------------------------------
    async def chat(self, ws: WebSocket) -> None:
        self._start_drain_watchers()
        await ws.accept(subprotocol=token_subprotocol(ws.headers))
        out = Outbox(ws)
        from bizra_voice.serve.tickets import TicketsUnavailable, has_ticket, resolve_params

        denied = self.access.check(ws.query_params, ws.headers, ws.url.scheme, ticket=has_ticket(ws.query_params))
        if denied is not None:
            await out.fail(denied.message, denied.close_code)
            return
        if self._draining is not None:
            await out.fail(f"{self._draining}; reconnect to reach another replica", P.CloseCode.SERVICE_RESTART)
            return
        try:  # the query's parameters, or those of its session ticket (POST /api/sessions)
            params = await resolve_params(ws.query_params, self.tickets, self.access)
        except BadParams as exc:
            self.metrics.rejected("chat", "bad_request")
            await out.fail(str(exc), P.CloseCode.BAD_REQUEST)
            return
        except TicketsUnavailable as exc:
            self.metrics.rejected("chat", "tickets_unavailable")
            await out.fail(f"The session could not be set up: {exc}; try again in a few seconds.",
                           P.CloseCode.AT_CAPACITY)
            return
        out.events = params.events
        accepted_at = time.monotonic()
        early = asyncio.create_task(ws.receive())  # a message that beats the handshake (see below)
        refusal = self.runtime.admission_refusal()
        if refusal is not None:
            early.cancel()
            self.metrics.rejected("chat", "capacity")
            await out.fail(self._capacity_message(refusal), P.CloseCode.AT_CAPACITY)
            return
        decision_task = asyncio.create_task(self._decide(params.mode))
        try:
            live = await self.runtime.open_session(self._spec(params))
        except AtCapacity as exc:
            decision_task.cancel()
            early.cancel()
            self.metrics.rejected("chat", "capacity")
            await out.fail(self._capacity_message(str(exc)), P.CloseCode.AT_CAPACITY)
            return
        except (BadSessionRequest, EngineError) as exc:
            decision_task.cancel()
            early.cancel()
            self.metrics.rejected("chat", "bad_request")
            await out.fail(str(exc), P.CloseCode.BAD_REQUEST)
            return
        self.bind_session_logs(live.session_id)
        recorder = self.start_recording(live.session_id, params.record, "chat", {
            "voice": live.voice, "instructions": params.text_prompt or "", "mode": params.mode})
        if recorder is not None:
            from bizra_voice.serve.session_tap import tap_outbox_events

            tap_outbox_events(out, recorder)
        tapped = self.tap_session(live, recorder, lambda: self.metrics.first_audio(
            "chat", (time.monotonic() - accepted_at) * 1000))
        record = SessionRecord() if self.record_dir is not None else None
        rel = self.config.reliability
        session = ChatSession(ws, out, tapped, stats_interval_s=self.config.voice_server.stats_interval_s,
                              stats_source=self.runtime.stats, record=record, first_receive=early,
                              outbound=OutboundBuffer(rel.outbound_max_frames, rel.outbound_close_after_dropped))
        self._open[live.session_id] = out
        live.on_input_dropped = self._input_dropped_reporter("chat", out)
        from bizra_voice.serve.hybrid_wiring import attach_hybrid

        hybrid = attach_hybrid(self, session, live, params)
        from bizra_voice.serve.live_update import UPDATE_EVENT, LiveUpdates

        updates = LiveUpdates(out, tapped, hybrid, self.engine_config.default_persona, recorder)
        session.on(UPDATE_EVENT, updates.on_event)
        try:
            decision = await decision_task
            if early.done():  # it arrived before the handshake was sent
                try:
                    check_early_message(early.result())
                except ClientProtocolError as exc:
                    await out.fail(str(exc), exc.close_code)
                    return
            await out.send(P.handshake())
            await out.event({
                "type": "session.started", "session_id": live.session_id, "voice": live.voice,
                "mode": decision["mode"], "mode_requested": params.mode, "reason": decision["reason"],
                "replica": self.replica, "gpu_ids": self.gpu_ids, "slot": live.slot,
                "seed": live.seed, "prefill_ms": round(live.prefill_ms, 1),
                "cpu_dev_profile": self.config.cpu_dev,
                **({"warning": CPU_DEV_WARNING} if self.config.cpu_dev else {}),
            })
            self.metrics.started("chat", (time.monotonic() - accepted_at) * 1000)
            await out.event({"type": "recording", "on": recorder is not None})
            await session.run()
        except Exception as exc:
            ending = ending_for(exc)
            if ending is not None and not out.closed:
                log_ending(live.session_id, ending, exc)
                await out.fail(ending.message, ending.close_code)
        finally:
            self._open.pop(live.session_id, None)
            if not early.done():
                early.cancel()
            await updates.close()
            await hybrid.close()
            await live.close()
            if recorder is not None:
                recorder.close()
            if record is not None and self.record_dir is not None:
                record.save(self.record_dir / f"{live.session_id}.npz")
            await out.close()

    async def realtime(self, ws: WebSocket) -> None:
        """``/v1/realtime``: an OpenAI Realtime client on the same engine, slots and limits as /api/chat."""
        from bizra_voice.serve.realtime_session import RealtimeSession
        from bizra_voice.serve.tickets import TicketsUnavailable, has_ticket, resolve_params

        self._start_drain_watchers()

        await ws.accept(subprotocol=token_subprotocol(ws.headers))
        accepted_at = time.monotonic()
        denied = self.access.check(ws.query_params, ws.headers, ws.url.scheme, ticket=has_ticket(ws.query_params))
        reject = None
        if denied is not None:
            reject = (denied.message, "access_denied", denied.close_code)
        elif self._draining is not None:
            reject = (f"{self._draining}; reconnect to reach another replica", "server_draining",
                      P.CloseCode.SERVICE_RESTART)
        else:
            try:  # the query's parameters, or those of its session ticket (POST /api/sessions)
                params = await resolve_params(ws.query_params, self.tickets, self.access)
            except BadParams as exc:
                self.metrics.rejected("realtime", "bad_request")
                reject = (str(exc), "invalid_request", P.CloseCode.BAD_REQUEST)
            except TicketsUnavailable as exc:
                self.metrics.rejected("realtime", "tickets_unavailable")
                reject = (f"The session could not be set up: {exc}; try again in a few seconds.",
                          "server_busy", P.CloseCode.AT_CAPACITY)
        session = RealtimeSession(self, ws, params if reject is None else SessionParams(), accepted_at)
        if reject is not None:
            await session.fail(reject[0], reject[1], reject[2], "invalid_request_error")
            return
        key = f"realtime-{id(session)}"
        self._open[key] = session.drain_handle()
        try:
            await session.run()
        finally:
            self._open.pop(key, None)

    async def realtime_call(self, request: Request) -> Response:
        """``POST /v1/realtime/calls``: answer a WebRTC offer; the call is then served in the background."""
        from bizra_voice.webrtc.calls import CallRefused, open_call

        self._start_drain_watchers()
        try:
            call = await open_call(self, request, [i.model_dump(exclude_none=True) for i in self.config.realtime.ice_servers])
        except CallRefused as refused:
            return refused.response()
        key = f"realtime-call-{call.call_id}"
        self._open[key] = call.session.drain_handle()
        await self.calls.opened(call)  # in the call directory before the client learns the call id

        async def serve_call() -> None:
            try:
                await call.run()
            except Exception:
                log.exception("realtime call %s failed", call.call_id)
            finally:
                self._open.pop(key, None)
                self.calls.ended(call.call_id)

        task = asyncio.ensure_future(serve_call())
        self._call_tasks.add(task)
        task.add_done_callback(self._call_tasks.discard)
        return Response(call.pc.localDescription.sdp, status_code=201, media_type="application/sdp",
                        headers={"Location": f"{request.url.path.rstrip('/')}/{call.call_id}"})

    async def hang_up(self, call_id: str, request: Request) -> Response:
        """``POST /v1/realtime/calls/<id>/hangup``, wherever the proxy routed it (serve/call_relay.py)."""
        from bizra_voice.serve.call_relay import hangup_response

        denied = self.access.check(request.query_params, request.headers, request.url.scheme)
        if denied is not None:
            return JSONResponse({"error": {"type": "invalid_request_error", "code": "access_denied",
                                           "message": denied.message}}, status_code=denied.status)
        return hangup_response(await self.calls.hang_up(call_id), call_id)

    # ---- operations: metrics, recording, session-tagged logs (bizra_voice/serve/metrics.py, recording.py)
    def _init_operations(self) -> None:
        from bizra_voice import logctx
        from bizra_voice.recording import purge_expired
        from bizra_voice.serve.metrics import MetricsPump, VoiceMetrics

        logctx.install()
        self.metrics = VoiceMetrics()
        self.metrics_pump = MetricsPump(self.runtime, self.metrics).start()
        rec = self.config.recording
        if rec.enabled:
            removed = purge_expired(self.config.recording_dir, rec.retention_days)
            log.info("recording enabled (consent required per session) in %s, %g days retention; %d expired "
                     "folders deleted", self.config.recording_dir, rec.retention_days, len(removed))

    def bind_session_logs(self, session_id: str) -> None:
        """From here on, every log line of this request's tasks carries the session id."""
        from bizra_voice import logctx

        logctx.bind_session(session_id)

    def start_recording(self, session_id: str, requested: bool, endpoint: str, meta: dict[str, Any]):
        """A SessionRecorder when the user consented (``record``) and recording is enabled, else None."""
        from bizra_voice.recording import SessionRecorder, purge_expired, should_record

        rec = self.config.recording
        if not should_record(requested, rec.enabled):
            return None
        try:
            purge_expired(self.config.recording_dir, rec.retention_days)
            recorder = SessionRecorder(self.config.recording_dir, session_id,
                                       {"endpoint": endpoint, "replica": self.replica, **meta})
        except OSError as exc:
            log.error("recording could not start (%s); the session goes on unrecorded", exc)
            return None
        self.metrics.recordings.inc()
        log.info("recording this session (user consent) to %s", recorder.folder)
        return recorder

    def tap_session(self, live: Any, recorder: Any, on_first_output: Any) -> Any:
        from bizra_voice.serve.session_tap import TappedLive

        return TappedLive(live, recorder, on_first_output)

    def _sampling(self, params: SessionParams) -> SamplingParams:
        return SamplingParams(**params.sampling_kwargs())

    def _spec(self, params: SessionParams) -> SessionSpec:
        return SessionSpec(
            text_prompt=params.text_prompt or "",
            voice=params.voice_prompt or self.engine_config.default_voice,
            sampling=SamplingParams(**params.sampling_kwargs()),
        )

    def _capacity_message(self, refusal: str | None = None) -> str:
        """Why a session is refused for capacity: the engine's own reason (slots full, or it cannot take one
        more in real time right now), with the replica's measured capacity."""
        reason = refusal or self.runtime.admission_refusal() or "All session slots are in use; try again shortly."
        n = self.runtime.capacity
        return f"The server is at capacity: {reason} (this replica's capacity: {n} session{'s' if n != 1 else ''})"

    def _input_dropped_reporter(self, endpoint: str, out: Any):
        """``LiveSession.on_input_dropped``: the catch-up drop as a metric and a ``session.input_dropped`` event."""

        def report(dropped: int, total: int) -> None:
            self.metrics.input_frames_dropped.inc(dropped, tags={"endpoint": endpoint})
            event = {"type": "session.input_dropped", "frames": dropped, "total_frames": total,
                     "ms": dropped * C.FRAME_MS, "reason": "the engine fell behind; the oldest input was "
                     "dropped to catch up"}
            task = asyncio.ensure_future(out.event(event))
            task.add_done_callback(lambda t: t.exception())  # a gone client is not an error here

        return report

    def _autoscaling_stats(self) -> dict[str, float]:
        """Serve custom autoscaling metrics (``record_autoscaling_stats``): sessions held and the target for
        this replica's MEASURED capacity (serve/autoscaling.py turns them into the autoscaler's load)."""
        from bizra_voice.serve.autoscaling import SESSIONS, TARGET_SESSIONS

        target = self.config.voice_server.target_session_fraction * self.runtime.capacity
        return {SESSIONS: float(self.runtime.active_sessions), TARGET_SESSIONS: max(1.0, target)}

    async def _decide(self, requested: str) -> dict[str, Any]:
        if self.router is None:
            return {"mode": "standalone", "reason": "no router deployed; standalone"}
        try:
            return await asyncio.wait_for(self.router.decide_session.remote(requested), timeout=3.0)
        except Exception as exc:
            return {"mode": "standalone", "reason": f"router unavailable ({type(exc).__name__}); standalone"}
