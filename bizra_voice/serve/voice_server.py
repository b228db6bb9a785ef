"""VoiceServer: the FastAPI ingress and the PersonaPlex engine in one Ray Serve replica.

A session's state lives on the replica that owns its slot, so the WebSocket ends here (DESIGN §1): one
open WebSocket = one ongoing request, ``max_ongoing_requests`` = slots + a margin, and a full replica
answers 0x05 + 1013 at once instead of letting the client wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.staticfiles import StaticFiles

import bizra_voice
from bizra_voice import protocol as P
from bizra_voice.config import CPU_DEV_WARNING, AppConfig
from bizra_voice.engine.api import AtCapacity, BadSessionRequest, EngineError, SamplingParams, SessionSpec
from bizra_voice.serve.ws_session import ChatSession, Outbox, SessionRecord
from bizra_voice.session_params import BadParams, SessionParams

log = logging.getLogger("ray.serve")

FALLBACK_PAGE = """<!doctype html><meta charset="utf-8"><title>BIZRA Voice</title>
<h1>BIZRA Voice</h1><p>The server is running. The web client is not installed in <code>{dir}</code>;
connect a moshi/PersonaPlex client to <code>/api/chat</code>.</p>"""


def default_client_dir() -> Path:
    return Path(bizra_voice.__file__).resolve().parents[1] / "client"


def ensure_tiny_checkpoint(folder: Path) -> Path:
    """Generate the tiny random checkpoint once per node (file lock: replicas may start together)."""
    import fcntl

    from bizra_voice.tiny import ensure_tiny

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_tiny(folder)


def replica_tag() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (unit use)
        return f"local-{os.getpid()}"


def create_app(server: VoiceServer) -> FastAPI:
    """The HTTP/WebSocket routes of one replica, bound to its ``server``."""
    app = FastAPI(title="BIZRA Voice", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return await server.health()

    @app.get("/api/voices")
    async def voices() -> dict[str, Any]:
        return server.voices()

    @app.api_route("/api/ask", methods=["GET", "POST"])
    async def ask(request: Request) -> Response:
        return await server.ask(request)

    @app.websocket("/api/chat")
    async def chat(ws: WebSocket) -> None:
        await server.chat(ws)

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
    def __init__(self, config: dict, router=None, qwen=None) -> None:
        import ray

        from bizra_voice.engine.runtime import EngineRuntime

        self.config = AppConfig.model_validate(config)
        self.router = router
        self.qwen = qwen
        self.replica = replica_tag()
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        engine_config = self.config.engine
        if self.config.tiny_engine:
            checkpoint = ensure_tiny_checkpoint(self.config.tiny_engine_dir)
            engine_config = engine_config.model_copy(update={"checkpoint": str(checkpoint)})
        if self.config.cpu_dev:
            log.warning(CPU_DEV_WARNING)
        self.runtime = EngineRuntime.create(engine_config)
        self.engine_config = engine_config
        vs = self.config.voice_server
        self.client_dir = Path(vs.client_dir) if vs.client_dir else default_client_dir()
        self.static = StaticFiles(directory=self.client_dir, html=True, check_dir=False)
        self.record_dir = Path(vs.debug_record_dir) if vs.debug_record_dir else None
        from bizra_voice.serve import voice_server as module

        module._replica_server = self
        log.info("VoiceServer %s ready: %d slots, GPUs %s", self.replica, self.runtime.capacity, self.gpu_ids)

    def __del__(self) -> None:
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.shutdown()

    def check_health(self) -> None:
        if not self.runtime.alive:
            raise RuntimeError("the engine tick thread has stopped")

    # ---- REST -------------------------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        stats = self.runtime.stats()
        body: dict[str, Any] = {
            "status": "ok",
            "profile": self.config.profile,
            "cpu_dev_profile": self.config.cpu_dev,
            "replica": self.replica,
            "gpu_ids": self.gpu_ids,
            "slots": {"total": self.runtime.capacity, "free": self.runtime.capacity - self.runtime.active_sessions},
            "active_sessions": self.runtime.active_sessions,
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
        return {"voices": self.runtime.voices(), "default": self.engine_config.default_voice}

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
        await ws.accept()
        out = Outbox(ws)
        try:
            params = SessionParams.from_query(ws.query_params)
        except BadParams as exc:
            await out.fail(str(exc), P.CloseCode.BAD_REQUEST)
            return
        if self.runtime.active_sessions >= self.runtime.capacity:
            await out.fail(self._capacity_message(), P.CloseCode.AT_CAPACITY)
            return
        decision_task = asyncio.create_task(self._decide(params.mode))
        try:
            live = await self.runtime.open_session(self._spec(params))
        except AtCapacity:
            decision_task.cancel()
            await out.fail(self._capacity_message(), P.CloseCode.AT_CAPACITY)
            return
        except (BadSessionRequest, EngineError) as exc:
            decision_task.cancel()
            await out.fail(str(exc), P.CloseCode.BAD_REQUEST)
            return
        record = SessionRecord() if self.record_dir is not None else None
        session = ChatSession(ws, out, live, stats_interval_s=self.config.voice_server.stats_interval_s,
                              stats_source=self.runtime.stats, record=record)
        try:
            decision = await decision_task
            await out.send(P.handshake())
            await out.event({
                "type": "session.started", "session_id": live.session_id, "voice": live.voice,
                "mode": decision["mode"], "mode_requested": params.mode, "reason": decision["reason"],
                "replica": self.replica, "gpu_ids": self.gpu_ids, "slot": live.slot,
                "seed": live.seed, "prefill_ms": round(live.prefill_ms, 1),
                "cpu_dev_profile": self.config.cpu_dev,
                **({"warning": CPU_DEV_WARNING} if self.config.cpu_dev else {}),
            })
            await session.run()
            reason = live.close_reason
            if reason and not out.closed:
                code = P.CloseCode.GOING_AWAY if "shutting down" in reason else P.CloseCode.INTERNAL
                await out.fail(f"The server ended the session: {reason}.", code)
        except Exception as exc:
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("session %s setup failed", live.session_id)
            await out.fail("internal server error; the session was closed", P.CloseCode.INTERNAL)
        finally:
            await live.close()
            if record is not None and self.record_dir is not None:
                record.save(self.record_dir / f"{live.session_id}.npz")
            await out.close()

    def _spec(self, params: SessionParams) -> SessionSpec:
        return SessionSpec(
            text_prompt=params.text_prompt or "",
            voice=params.voice_prompt or self.engine_config.default_voice,
            sampling=SamplingParams(**params.sampling_kwargs()),
        )

    def _capacity_message(self) -> str:
        return (f"The server is at capacity ({self.runtime.capacity} of {self.runtime.capacity} sessions on this "
                "replica); try again in a moment.")

    async def _decide(self, requested: str) -> dict[str, Any]:
        if self.router is None:
            return {"mode": "standalone", "reason": "no router deployed; standalone"}
        try:
            return await asyncio.wait_for(self.router.decide_session.remote(requested), timeout=3.0)
        except Exception as exc:
            return {"mode": "standalone", "reason": f"router unavailable ({type(exc).__name__}); standalone"}
