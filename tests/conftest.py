"""Shared fixtures: one Ray cluster per pytest session and the CPU dev profile deployed on it.

Ray Serve is started for real (a WebSocket must go through the Serve proxy; Starlette's TestClient would
bypass Ray), on a free port (or ``BIZRA_TEST_PORT``) so a stray server or a second checkout never answers.
``cpu_server`` is used by the serving tests and the browser tests.

The slot count is measured at replica start (``engine.slots: auto``) and differs per machine: tests read it
from ``/api/health`` (``slot_total``) and wait for slots by asking the server (``wait_slots``), never by
assuming a number or a prefill speed. ``wait_ready`` accepts only this project's health answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Serve's proxy hook: over-long URLs and headers get their reason (414/431, 0x05) — as the README runs it
os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "bizra_voice.serve.proxy_limits:proxy_middlewares")
os.environ.setdefault("NO_TORCH_COMPILE", "1")
# Ray starts its workers at nice 15 (raylet's worker_niceness): the engine's tick thread would then lose the
# CPU to every ordinary process here — this test client, Chromium, the rest of the suite. At 0 it competes
# fairly; the side models lower themselves below it (bizra_voice/serve/cpu_share.py).
os.environ.setdefault("RAY_worker_niceness", "0")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests._ports import serve_test_port  # noqa: E402

SERVE_PORT = serve_test_port()
BASE_URL = f"http://127.0.0.1:{SERVE_PORT}"


def cpu_profile_args() -> dict:
    """The ``args:`` of serve_config.cpu.yaml (the profile under test is the shipped one)."""
    config = yaml.safe_load((REPO / "serve_config.cpu.yaml").read_text())
    return config["applications"][0]["args"]


CPU_PROFILE = "cpu-dev"


def get_json(url: str, timeout_s: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def is_our_health(body: object, profile: str | None = CPU_PROFILE) -> bool:
    """True for BIZRA Voice's ``/api/health`` answer (of ``profile``): a stray server's 200 is not ready."""
    if not isinstance(body, dict) or body.get("status") != "ok" or not isinstance(body.get("replica"), str):
        return False
    slots = body.get("slots")
    if not isinstance(slots, dict) or not isinstance(slots.get("total"), int) or slots["total"] < 1:
        return False
    return profile is None or body.get("profile") == profile


def wait_ready(base_url: str, timeout_s: float = 300.0, *, profile: str | None = CPU_PROFILE,
               query: str = "") -> dict:
    """Poll ``base_url``/api/health until OUR app answers (status ok, the expected profile, a replica and
    its slots); return that health. Generous by default: a replica measures its slots before it is up."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            body = get_json(f"{base_url}/api/health{query}", timeout_s=5)
            if is_our_health(body, profile):
                return body
            last = body
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.25)
    raise TimeoutError(f"{base_url}/api/health gave no BIZRA Voice {profile or ''} answer within {timeout_s} s "
                       f"(last: {last!r:.300})")


def slot_total(base_url: str, query: str = "") -> int:
    """The replica's measured session slots (``slots: auto`` sizes them per machine)."""
    return int(get_json(f"{base_url}/api/health{query}")["slots"]["total"])


def wait_slots(base_url: str, *, free: int | None = None, all_free: bool = False, timeout_s: float = 60.0,
               query: str = "") -> dict:
    """Wait until the server reports ``free`` free slots (or all of them); return that health. A session's
    slot is released after its socket closes, so a test asks the server instead of assuming it is done."""
    deadline = time.monotonic() + timeout_s
    while True:
        health = get_json(f"{base_url}/api/health{query}")
        slots = health["slots"]
        if slots["free"] == (slots["total"] if all_free else free):
            return health
        assert time.monotonic() < deadline, f"slots never reached {'all' if all_free else free} free: {slots}"
        time.sleep(0.1)


def wait_engine_quiet(base_url: str, quiet_s: float = 5.5, timeout_s: float = 120.0, query: str = "") -> None:
    """Wait until the engine has not ticked for ``quiet_s`` (> ``engine.admission_window_s``, 5 s): sessions
    opened together are then all admitted, whatever the ticks of the tests before looked like."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while True:
        ticks = get_json(f"{base_url}/api/health{query}")["engine"]["ticks"]
        if ticks != last:
            last, since = ticks, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        assert time.monotonic() < deadline, "the engine never went quiet"
        time.sleep(0.25)


class SlotHolders:
    """Idle sessions that take every slot of a server and keep them until ``release()`` — an event, not a
    timer, so a slow prefill on a busy machine cannot make the first holder leave before the last arrives.

    A holder refused with 1013 (another test's session not yet gone, or the engine briefly over its tick
    budget) tries again until ``timeout_s``."""

    def __init__(self, url: str, count: int, timeout_s: float = 180.0) -> None:
        self.url, self.count, self.timeout_s = url, count, timeout_s
        self.admitted = 0
        self.closes: list[int | None] = []
        self._release = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> SlotHolders:
        self._tasks = [asyncio.create_task(self._hold()) for _ in range(self.count)]
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()
        await asyncio.gather(*self._tasks, return_exceptions=exc[0] is not None)

    def release(self) -> None:
        self._release.set()

    async def all_admitted(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while self.admitted < self.count:
            failed = [t for t in self._tasks if t.done()]
            if failed:
                failed[0].result()  # raises what went wrong
                raise AssertionError(f"a holder left before it was released ({self.admitted}/{self.count} in)")
            assert time.monotonic() < deadline, f"only {self.admitted} of {self.count} holders got a slot"
            await asyncio.sleep(0.05)

    async def _hold(self) -> None:
        import websockets

        deadline = time.monotonic() + self.timeout_s
        while True:
            async with websockets.connect(self.url, compression=None, max_size=None, open_timeout=30) as ws:
                refusal = None
                try:
                    while True:  # the handshake 0x00 means admitted; a refusal is 0x05, then the close
                        message = await asyncio.wait_for(ws.recv(), self.timeout_s)
                        if message == b"\x00":
                            break
                        if isinstance(message, bytes) and message[:1] == b"\x05":
                            refusal = message[1:].decode("utf-8", "replace")
                except websockets.ConnectionClosed:
                    if ws.close_code == 1013 and time.monotonic() < deadline:
                        await asyncio.sleep(0.5)
                        continue
                    raise AssertionError(f"holder refused: {ws.close_code} {refusal}") from None
                self.admitted += 1
                await self._release.wait()
                await ws.close()
                self.closes.append(ws.close_code)
                return


def input_frames_dropped(result) -> int:
    """Input frames the engine dropped to catch up (it reports each drop: ``session.input_dropped``)."""
    return max((int(e.get("total_frames", 0)) for e in result.events if e.get("type") == "session.input_dropped"),
               default=0)


def frames_owed(result) -> int:
    """Output frames a ``/api/chat`` session owes its client: one per input frame the engine stepped."""
    return result.frames_sent - input_frames_dropped(result)


async def run_chat_lockstep(url: str, pcm, *, lead_frames: int = 3, drain_s: float = 1.5,
                            stall_s: float = 120.0):
    """``run_chat`` whose input waits for the server: frame k goes out once the output of frame
    ``k - lead_frames`` has come back (and never faster than real time). The engine's input queue then
    never grows past ``lead_frames``, so however slow the machine nothing is dropped to catch up, and
    tokens can be compared with an offline run frame for frame."""
    import websockets

    from bizra_voice import protocol as P
    from bizra_voice.audio import OggOpusEncoder
    from bizra_voice.chat_client import ResultCollector
    from bizra_voice.constants import FRAME_MS, FRAME_SIZE

    result = ResultCollector()
    start = time.monotonic()
    async with websockets.connect(url, compression=None, max_size=None, open_timeout=30) as ws:
        reader = asyncio.create_task(result.read(ws, start))
        await asyncio.wait_for(asyncio.shield(result.handshake), timeout=stall_s)
        if not result.handshake.result():
            await reader
            return result.data
        encoder = OggOpusEncoder()
        t0 = time.monotonic()
        for k in range(len(pcm) // FRAME_SIZE):
            waiting_since = time.monotonic()
            while result.data.frames_received < k - lead_frames and not reader.done():
                assert time.monotonic() - waiting_since < stall_s, f"no output for frame {k - lead_frames}"
                await asyncio.sleep(0.005)
            if reader.done():
                break
            await asyncio.sleep(max(0.0, t0 + k * FRAME_MS / 1000.0 - time.monotonic()))
            ogg = encoder.encode(pcm[k * FRAME_SIZE:(k + 1) * FRAME_SIZE])
            result.data.send_times.append(time.monotonic())
            result.data.frames_sent += 1
            if ogg:
                await ws.send(P.audio(ogg))
        await result.quiet(drain_s)
        if not reader.done():
            await ws.close()
        await asyncio.gather(reader, return_exceptions=True)
    return result.data


async def run_chat_admitted(url: str, pcm, *, lockstep: bool = False, within_s: float = 180.0, **kwargs):
    """``run_chat`` (or ``run_chat_lockstep``) as a client that honours 1013 "try again later": a session
    refused before its handshake (slots full, or the engine over its tick budget right now because of
    another test's or another process's load) is opened again, until ``within_s``."""
    from bizra_voice.chat_client import run_chat

    deadline = time.monotonic() + within_s
    while True:
        result = await (run_chat_lockstep(url, pcm, **kwargs) if lockstep else run_chat(url, pcm, **kwargs))
        if result.handshake_s is not None or result.close_code != 1013 or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.5)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole pytest session (reused if the process already has one). Always a
    new one (``address="local"``): without it ``ray.init`` joins the latest cluster on this machine - a user's
    ``serve run``, or a second test run - and the tests would redeploy its apps and shut its Serve down."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(
            address="local", num_cpus=8, include_dashboard=False, namespace="serve", log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "NO_TORCH_COMPILE": "1",
                                      "RAY_AUTH_MODE": "disabled"}},
        )
        started = True
    yield ray
    if started:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


@pytest.fixture(autouse=True)
def _cpu_server_idle(request):
    """A test on the shared server starts when the sessions of the tests before it are gone: a slot still
    held makes the engine's admission check the recent tick time, which a busy machine can fail (1013)."""
    if "cpu_server" in request.fixturenames:
        wait_slots(request.getfixturevalue("cpu_server"), all_free=True)


@pytest.fixture(scope="session")
def cpu_record_dir(tmp_path_factory) -> Path:
    """Where the CPU server writes each session's decoded input PCM and text tokens (test hook)."""
    return tmp_path_factory.mktemp("session-records")


@pytest.fixture(scope="session")
def cpu_recordings_dir(tmp_path_factory) -> Path:
    """Where the CPU server stores consented recordings (recording enabled; sessions opt in with record=1)."""
    return tmp_path_factory.mktemp("recordings")


@pytest.fixture(scope="session")
def cpu_args(cpu_record_dir, cpu_recordings_dir, tmp_path_factory) -> dict:
    """The CPU profile's app args as deployed by ``cpu_server`` (record hook on, per-session cache)."""
    args = cpu_profile_args()
    # Hybrid mode's timeouts are product behaviour (a late side model -> the turn stays standalone, told
    # why); on a slow or busy machine the tiny Whisper and Qwen, which yield the CPU to the engine
    # (serve/cpu_share.py), can miss the shipped ones. The tests of the answer path need the answer, so
    # here the bounds are generous; the timeouts themselves are tested on purpose (test_hybrid_errors.py,
    # and test_hybrid_serve.py's 1 ms deadline app).
    args.setdefault("router", {}).update(deadline_ms=120_000.0, status_timeout_s=60.0)
    args.setdefault("hybrid", {}).update(route_timeout_s=120.0, transcribe_timeout_s=120.0,
                                         answer_timeout_s=300.0)
    args["voice_server"]["debug_record_dir"] = str(cpu_record_dir)
    args["recording"] = {"enabled": True, "dir": str(cpu_recordings_dir), "retention_days": 1}
    args.setdefault("cache_dir", os.environ.get("BIZRA_VOICE_CACHE", str(tmp_path_factory.mktemp("cache"))))
    return args


@pytest.fixture(scope="session")
def cpu_server(ray_session, cpu_args) -> str:
    """Deploy the CPU dev profile (serve_config.cpu.yaml's args) and yield its base URL."""
    from ray import serve

    from bizra_voice.app import build_app

    args = cpu_args
    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
    started = time.monotonic()
    serve.run(build_app(args), name="bizra", route_prefix="/", blocking=False)
    wait_ready(BASE_URL, profile=args.get("profile", CPU_PROFILE))
    os.environ["BIZRA_TEST_CPU_SERVER_START_S"] = f"{time.monotonic() - started:.2f}"
    yield BASE_URL
    serve.delete("bizra")


@pytest.fixture
def serve_log(caplog):
    """``caplog`` listening on the ``ray.serve`` logger itself: once Ray has configured that logger (any
    earlier test in this process may have) it no longer propagates to the root logger caplog watches."""
    logger = logging.getLogger("ray.serve")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
