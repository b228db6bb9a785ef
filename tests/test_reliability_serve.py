"""Reliability and security through the real Serve proxy: bad input, auth/origin, replica kill, drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bizra_voice import protocol as P
from bizra_voice.audio import encode_ogg
from bizra_voice.audio.ogg_check import ogg_page
from bizra_voice.chat_client import chat_url, run_chat
from bizra_voice.constants import FRAME_SIZE, SAMPLE_RATE
from tests.conftest import run_chat_admitted, wait_ready, wait_slots
from tests.test_serve_cpu import offline_tokens, session_record, user_pcm

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

TOKEN = "rel-s3cret-token"
REL_PREFIX = "/rel"


async def bad_case(url: str, messages: list[bytes | str], *, before_handshake: bool = False,
                   subprotocols: list[str] | None = None, origin: str | None = None) -> tuple[list[str], int | None]:
    """Open a session, send ``messages``; return the 0x05 errors and the close code."""
    import websockets

    kwargs = {"compression": None, "max_size": None, "open_timeout": 30}
    if subprotocols:
        kwargs["subprotocols"] = subprotocols
    if origin:
        kwargs["origin"] = origin
    errors: list[str] = []
    async with websockets.connect(url, **kwargs) as ws:
        if not before_handshake:
            first = await asyncio.wait_for(ws.recv(), 30)
            if first != b"\x00":
                errors.append(P.decode(first).text())
        for m in messages:
            try:
                await ws.send(m)
            except websockets.ConnectionClosed:
                break
        try:
            while True:
                raw = await asyncio.wait_for(ws.recv(), 15)
                if isinstance(raw, bytes) and raw[:1] == b"\x05":
                    errors.append(P.decode(raw).text())
        except websockets.ConnectionClosed:
            pass
        return errors, ws.close_code


def _valid_stream() -> list[bytes]:
    return encode_ogg(np.zeros(3 * FRAME_SIZE, np.float32))


def bad_corpus(base: str) -> list[tuple[str, str, list, dict, int, str]]:
    """(name, url, messages, options, close code, text expected in the error)."""
    url = chat_url(base)
    ok = _valid_stream()
    return [
        ("unknown kind", url, [b"\x09abc"], {}, 1008, "unknown message kind 0x09"),
        ("empty message", url, [b""], {}, 1008, "empty message"),
        ("oversize message", url, [b"\x01" + bytes(P.MAX_MESSAGE_BYTES)], {}, 1009, "byte limit"),
        ("text frame", url, ["hello"], {}, 1003, "binary"),
        ("server-only kind", url, [P.text("hi")], {}, 1008, "may not send text"),
        ("invalid json", url, [b"\x04{nope"], {}, 1007, "not valid JSON"),
        ("invalid ogg", url, [P.audio(b"definitely not ogg")], {}, 1008, "not Ogg pages"),
        ("corrupt ogg", url, [P.audio(ok[0][:-3] + b"xyz")], {}, 1008, "checksum"),
        ("non-opus ogg", url, [P.audio(ogg_page(b"\x01vorbis" + bytes(23), flags=2))], {}, 1008, "not Opus"),
        ("audio before handshake", chat_url(base, text_prompt="x " * 600), [P.audio(ok[0])],
         {"before_handshake": True}, 1008, "before the server's handshake"),
        ("nan temperature", chat_url(base, text_temperature="nan"), [], {}, 1008, "text_temperature"),
        ("temperature out of range", chat_url(base, audio_temperature="9"), [], {}, 1008, "audio_temperature"),
        ("negative topk", chat_url(base, text_topk="-3"), [], {}, 1008, "text_topk"),
        ("voice path", chat_url(base, voice_prompt="../../etc/passwd"), [], {}, 1008, "voice_prompt"),
        ("voice backslash", chat_url(base, voice_prompt="..\\x.pt"), [], {}, 1008, "voice_prompt"),
        ("unknown voice", chat_url(base, voice_prompt="NOPE"), [], {}, 1008, "NOPE"),
        ("long prompt", chat_url(base, text_prompt="a" * 5000), [], {}, 1008, "longer than"),
        ("bad mode", chat_url(base, mode="turbo"), [], {}, 1008, "mode"),
    ]


def test_bad_input_corpus_while_a_good_session_runs(cpu_server, cpu_args, cpu_record_dir):
    """The good session goes in lockstep with the server (its tokens are compared with an offline run, so
    no input may be dropped however slow the machine); the bad ones start once it holds its slot."""
    pcm = user_pcm()[: 5 * SAMPLE_RATE]
    url = chat_url(cpu_server, voice_prompt="NATM1", text_prompt="You are a calm test persona.", greedy=1, seed=0)
    total = wait_slots(cpu_server, all_free=True)["slots"]["total"]

    async def scenario():
        good = asyncio.create_task(run_chat_admitted(url, pcm, lockstep=True))
        await asyncio.to_thread(wait_slots, cpu_server, free=total - 1, timeout_s=120)
        outcomes = []
        for name, bad_url, messages, opts, code, text in bad_corpus(cpu_server):
            deadline = time.monotonic() + 180
            while True:  # a 1013 refusal (the engine over its tick budget right now) is not the case under test
                errors, got = await bad_case(bad_url, messages, **opts)
                if got != 1013 or code == 1013 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            outcomes.append((name, code, text, (errors, got)))
        return await good, outcomes

    good, outcomes = asyncio.run(scenario())
    for name, code, text, (errors, got) in outcomes:
        assert got == code, (name, got, errors)
        assert errors and text in errors[0], (name, errors)
    # a megabyte prompt cannot even form a WebSocket URL the proxy accepts: refused at the HTTP upgrade
    import websockets

    async def megabyte():
        try:
            async with websockets.connect(chat_url(cpu_server, text_prompt="a" * (1 << 20)), open_timeout=10):
                return "opened"
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        except (websockets.InvalidMessage, ConnectionError, websockets.ConnectionClosed, TimeoutError) as exc:
            return type(exc).__name__

    assert asyncio.run(megabyte()) != "opened"
    # the good session was untouched: complete, no errors, tokens equal to its solo offline run
    assert good.handshake_s is not None and not good.errors and good.close_code == 1000
    started = good.event("session.started")
    data = session_record(cpu_record_dir, started["session_id"])
    served = data["text_tokens"].tolist()
    checkpoint = Path(cpu_args["cache_dir"]).expanduser() / "tiny-personaplex"
    reference = offline_tokens(checkpoint, data["input_pcm"], "NATM1", "You are a calm test persona.")
    assert not good.event("session.input_dropped"), good.events
    assert len(served) >= 0.9 * (len(pcm) // FRAME_SIZE) and served == reference[: len(served)]
    assert wait_slots(cpu_server, all_free=True)["status"] == "ok"


# ---- a second app: 2 replicas, token + origin allow-list, no knowledge model --------------------------------
def deploy_rel_app(cpu_server: str, cpu_args: dict, name: str, prefix: str, *, protected: bool = True) -> str:
    """Deploy the 2-replica app without Qwen under ``prefix`` (token-protected with an Origin allow-list
    unless ``protected`` is False: a browser page on the test's own origin); return its base URL."""
    from ray import serve

    from bizra_voice.app import build_app

    args = json.loads(json.dumps(cpu_args))
    args["voice_server"].update(min_replicas=2, max_replicas=2, debug_record_dir=None)
    args["engine"]["slots"] = 2
    args["knowledge"]["enabled"] = False
    args["transcriber"] = {**args.get("transcriber", {}), "enabled": False}
    if protected:
        args["access"] = {"token": TOKEN, "allowed_origins": ["https://voice.example"]}
    args["reliability"] = {"drain_notice_s": 1.0}
    serve.run(build_app(args), name=name, route_prefix=prefix, blocking=False)
    base = cpu_server + prefix
    wait_ready(base, query=f"?token={TOKEN}" if protected else "")
    return base


@pytest.fixture(scope="module")
def rel_server(cpu_server, cpu_args):
    """Shared by the tests that leave it as they found it (nothing here kills or deletes it)."""
    from ray import serve

    base = deploy_rel_app(cpu_server, cpu_args, "bizra-rel", REL_PREFIX)
    yield base
    with contextlib.suppress(Exception):
        serve.delete("bizra-rel")


@pytest.fixture
def doomed_rel_server(cpu_server, cpu_args):
    """A rel app of its own for a test that kills a replica and deletes the app (no other test sees it)."""
    from ray import serve

    base = deploy_rel_app(cpu_server, cpu_args, "bizra-rel-doomed", REL_PREFIX + "-doomed")
    yield base
    with contextlib.suppress(Exception):
        serve.delete("bizra-rel-doomed")


def http_status(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_token_and_origin(rel_server):
    base = rel_server
    assert http_status(base + "/api/health") == 401
    assert http_status(base + "/api/health?token=wrong") == 401
    assert http_status(base + f"/api/health?token={TOKEN}") == 200
    assert http_status(base + "/api/voices", {"Authorization": f"Bearer {TOKEN}"}) == 200
    assert http_status(base + f"/api/voices?token={TOKEN}", {"Origin": "https://evil.example"}) == 403
    assert http_status(base + f"/api/voices?token={TOKEN}", {"Origin": "https://voice.example"}) == 200

    async def cases():
        wrong = await bad_case(chat_url(base, token="wrong"), [], before_handshake=True)
        none = await bad_case(chat_url(base), [], before_handshake=True)
        foreign = await bad_case(chat_url(base, token=TOKEN), [], before_handshake=True, origin="https://evil.example")
        ok_query = await run_chat(chat_url(base, token=TOKEN), None, hold_s=0.3)
        return wrong, none, foreign, ok_query

    wrong, none, foreign, ok_query = asyncio.run(cases())
    assert wrong[1] == 4401 and "wrong" in wrong[0][0]
    assert none[1] == 4401 and "required" in none[0][0]
    assert foreign[1] == 4403 and "evil.example" in foreign[0][0]
    assert ok_query.handshake_s is not None and ok_query.close_code == 1000

    async def subprotocol() -> tuple[str | None, bytes]:
        import websockets

        async with websockets.connect(chat_url(base), subprotocols=[f"bizra-token.{TOKEN}"], compression=None,
                                      origin="https://voice.example") as ws:
            return ws.subprotocol, await asyncio.wait_for(ws.recv(), 30)

    chosen, first = asyncio.run(subprotocol())
    assert chosen == f"bizra-token.{TOKEN}" and first == b"\x00"


def test_ask_without_a_knowledge_model_is_503(rel_server):
    """/api/ask on a deployment without Qwen: 503 and a sentence (a bad question is still a 400 first)."""
    for url, status in ((f"{rel_server}/api/ask?token={TOKEN}&q=What+is+the+capital%3F", 503),
                        (f"{rel_server}/api/ask?token={TOKEN}&q=", 400)):
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                got, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            got, body = exc.code, exc.read()
        assert got == status, (url, got, body)
        message = json.loads(body)["error"]
        assert ("not deployed" in message) if status == 503 else ("1 to 4000 characters" in message)


def _post_raw(url: str, body: bytes, content_type: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, body, {"content-type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_a_hang_up_routed_to_the_other_replica_still_ends_the_call(rel_server):
    """Serve's proxy routes the hang-up on its own: calls are opened and hung up until one hang-up lands on
    the replica that does not hold the call (``X-Bizra-Hangup: relayed``); the call directory in
    SessionTickets carries it to the owner, which ends the call (its data channel closes), and the call is
    then unknown on every replica."""
    from tests.test_webrtc_calls import WAIT_S, Peer

    calls_url = f"{rel_server}/v1/realtime/calls?token={TOKEN}"

    async def one_call() -> tuple[str, int, str, int]:
        peer = Peer()
        try:
            status, headers, sdp = _post_raw(calls_url, (await peer.offer()).encode(), "application/sdp")
            assert status == 201, sdp[:300]
            await peer.answer(sdp.decode())
            await peer.wait(lambda e: e["type"] == "session.created", "session.created")
            location = headers.get("Location") or headers["location"]
            hang_up = f"{location.split('?')[0]}/hangup?token={TOKEN}"
            hang_up = hang_up if hang_up.startswith("http") else rel_server.split(REL_PREFIX)[0] + hang_up
            status, headers, body = _post_raw(hang_up, b"", "application/json")
            where = headers.get("X-Bizra-Hangup") or headers.get("x-bizra-hangup", "")
            assert status == 200, (status, body[:300])
            await asyncio.wait_for(peer.closed.wait(), WAIT_S)  # the owner ended the call
            deadline = time.monotonic() + 10  # the owner's "forget" reaches the directory just after the end
            while True:
                again, _, body = _post_raw(hang_up, b"", "application/json")
                if again == 404 or time.monotonic() > deadline:
                    return where, again, body.decode(), status
                await asyncio.sleep(0.2)
        finally:
            await peer.close()

    seen = []
    for _ in range(24):  # each hang-up lands on either replica: 0.5**24 that none is relayed
        where, again, body, _ = asyncio.run(one_call())
        seen.append(where)
        assert again == 404 and "call_not_found" in body, (again, body)  # forgotten everywhere
        if where == "relayed":
            break
    assert "relayed" in seen, f"no hang-up reached the other replica in {len(seen)} calls: {seen}"
    print(f"\nhang-ups: {seen}")


def _replica_actor(replica_id: str):
    import ray

    for info in ray.util.list_named_actors(all_namespaces=True):
        if replica_id in info["name"] and "VoiceServer" in info["name"]:
            return ray.get_actor(info["name"], namespace=info["namespace"])
    raise LookupError(replica_id)


class Streamer:
    """A session that streams audio in real time until stopped (``pause``: stays open, sends nothing, so
    the engine stops ticking for it); notes what it saw."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.started = asyncio.get_running_loop().create_future()
        self.events: list[dict] = []
        self.errors: list[str] = []
        self.frames = 0
        self.close: tuple[int | None, str] = (None, "")
        self.stop = asyncio.Event()
        self.pause = asyncio.Event()
        self.task = asyncio.create_task(self._guarded())

    async def _guarded(self) -> None:
        try:
            await self.run()
            if not self.started.done():
                self.started.set_exception(RuntimeError(f"no session.started: {self.errors} {self.close}"))
        except Exception as exc:
            if not self.started.done():
                self.started.set_exception(exc)
            raise

    async def run(self) -> None:
        import websockets

        chunks = encode_ogg((0.05 * np.random.default_rng(0).standard_normal(60 * SAMPLE_RATE)).astype(np.float32))
        async with websockets.connect(self.url, compression=None, max_size=None) as ws:

            handshake = asyncio.Event()

            async def reader():
                try:
                    async for raw in ws:
                        msg = P.decode(raw, 1 << 24)
                        if msg.kind == P.Kind.HANDSHAKE:
                            handshake.set()
                        elif msg.kind == P.Kind.METADATA:
                            event = msg.json()
                            self.events.append(event)
                            if event.get("type") == "session.started" and not self.started.done():
                                self.started.set_result(event)
                        elif msg.kind == P.Kind.ERROR:
                            self.errors.append(msg.text())
                        elif msg.kind == P.Kind.AUDIO:
                            self.frames += 1
                except websockets.ConnectionClosed:
                    pass

            rd = asyncio.create_task(reader())
            await asyncio.wait([rd, asyncio.create_task(handshake.wait())], timeout=30,
                               return_when=asyncio.FIRST_COMPLETED)
            for chunk in chunks:
                while self.pause.is_set() and not self.stop.is_set() and not rd.done():
                    await asyncio.sleep(0.05)
                if self.stop.is_set() or rd.done():
                    break
                try:
                    await ws.send(P.audio(chunk))
                except websockets.ConnectionClosed:
                    break
                await asyncio.sleep(0.08)
            if not rd.done():
                await ws.close()
            await rd
            self.close = (ws.close_code, ws.close_reason)


def client_reconnect_codes() -> set[int]:
    """The close codes on which the bundled browser client reconnects by itself (client/js/core/protocol.js)."""
    source = (REPO / "client" / "js" / "core" / "protocol.js").read_text()
    match = re.search(r"RECONNECT_CODES = Object\.freeze\(\[([\d,\s]+)\]\)", source)
    assert match, "RECONNECT_CODES not found in the client"
    return {int(code) for code in match.group(1).split(",")}


async def one_session_per_replica(url: str, replicas: int = 2) -> dict[str, Streamer]:
    """Open streaming sessions until ``replicas`` distinct replicas each hold one; stop the extras.
    Only a capacity refusal (1013: a slot of a previous session not yet released) is tried again."""
    sessions: list[Streamer] = []
    by_replica: dict[str, Streamer] = {}
    for _ in range(8 * replicas):  # power-of-two-choices spreads them
        s = Streamer(url)
        sessions.append(s)
        try:
            started = await asyncio.wait_for(s.started, 120)
        except RuntimeError:
            await asyncio.gather(s.task, return_exceptions=True)
            assert s.close[0] == 1013, f"a session was refused for another reason: {s.close} {s.errors}"
            await asyncio.sleep(0.5)
            continue
        by_replica.setdefault(started["replica"], s)
        if len(by_replica) == replicas:
            break
    assert len(by_replica) == replicas, f"sessions reached {len(by_replica)} of {replicas} replicas"
    for s in sessions:
        if s not in by_replica.values():
            s.stop.set()
    return by_replica


async def frames_past(streamer: Streamer, count: int, timeout_s: float = 120.0) -> int:
    """Wait until ``streamer`` has received more than ``count`` frames (it is streaming); its frame count."""
    deadline = time.monotonic() + timeout_s
    while streamer.frames <= count:
        assert not streamer.task.done(), f"the session ended after {streamer.frames} frames: {streamer.close}"
        assert time.monotonic() < deadline, f"only {streamer.frames} of {count + 1} frames came back"
        await asyncio.sleep(0.05)
    return streamer.frames


async def reconnect_lands_on(url: str, within_s: float = 180.0) -> tuple[str | None, list]:
    """What a reconnecting client does: open a new session (again after a 1013 or a dropped connection);
    return the replica it landed on and what the failed attempts were told."""
    tried: list = []
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        result = await run_chat(url, None, hold_s=0.2, handshake_timeout_s=120)
        started = result.event("session.started")
        if started is not None:
            return started["replica"], tried
        tried.append((result.close_code, result.errors[:1]))
        await asyncio.sleep(0.5)
    return None, tried


def test_replica_kill_then_reconnect_and_drain_on_delete(doomed_rel_server):
    import ray
    from ray import serve

    base = doomed_rel_server
    url = chat_url(base, token=TOKEN)

    async def scenario():
        (victim_id, victim), (survivor_id, survivor) = list((await one_session_per_replica(url)).items())
        await frames_past(victim, 5)
        frames_before = await frames_past(survivor, 5)
        ray.kill(_replica_actor(victim_id), no_restart=True)
        await asyncio.wait_for(victim.task, 60)
        frames_after = await frames_past(survivor, frames_before + 10)  # it kept streaming through the kill
        survivor.pause.set()  # open but silent: its replica admits the reconnect without its ticks in the way
        landed = await reconnect_lands_on(url)
        # drain: deleting the app stops the surviving replica gracefully; its session is told first
        delete = asyncio.get_running_loop().run_in_executor(None, serve.delete, "bizra-rel-doomed")
        await asyncio.wait_for(survivor.task, 90)
        await delete
        return victim, survivor, victim_id, landed, frames_before, frames_after

    victim, survivor, victim_id, landed, frames_before, frames_after = asyncio.run(scenario())
    # The replica is gone, so nothing can send a close frame: the proxy drops the connection (1006), a code
    # on which the browser client reconnects by itself.
    print(f"killed replica's client saw close {victim.close}")
    assert victim.close[0] == 1006 and victim.close[0] in client_reconnect_codes(), victim.close
    landed, tried = landed
    assert landed is not None and landed != victim_id, tried
    assert frames_after > frames_before + 10  # the survivor kept streaming through the kill
    assert [e for e in survivor.events if e.get("type") == "session.draining"], survivor.events[-3:]
    assert survivor.close[0] == 1001 and "reconnect" in survivor.close[1], survivor.close
    assert survivor.close[0] in client_reconnect_codes()
    assert survivor.errors and ("shutting down" in survivor.errors[-1] or "stopping" in survivor.errors[-1])


# ---- autoscaling downscale: the replica Serve stops drains its session, the other carries on ------------------
SCALE_PREFIX = "/scale"
DOWNSCALE_DELAY_S = 20.0


def _running_voice_replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    deployment = status.deployments.get("VoiceServer") if status else None
    return int(deployment.replica_states.get("RUNNING", 0)) if deployment else 0


def test_autoscaling_downscale_drains_the_stopped_replicas_session(cpu_server, cpu_args):
    """Two replicas at one session each with a target of two sessions per replica: Serve's own autoscaler
    decides one replica is enough and stops one of them, which must drain (event, then 1001) while the
    other replica's session streams on; the drained client's reconnect lands on the survivor."""
    from ray import serve

    from bizra_voice.app import build_app

    args = json.loads(json.dumps(cpu_args))
    args["voice_server"].update(min_replicas=1, max_replicas=2, initial_replicas=2, target_session_fraction=1.0,
                                upscale_delay_s=600.0, downscale_delay_s=DOWNSCALE_DELAY_S, debug_record_dir=None)
    args["engine"]["slots"] = 2
    # The drain is under test, not the overload end (tested in test_endings_serve.py): on a busy machine two
    # replicas starting beside the sessions can keep an engine behind for > 10 s, which would end a session
    # with 1013 before the autoscaler stops its replica.
    args["engine"]["behind_grace_s"] = 600.0
    args["knowledge"]["enabled"] = False
    args["transcriber"] = {**args.get("transcriber", {}), "enabled": False}
    args["recording"] = {"enabled": False}
    args["reliability"] = {"drain_notice_s": 1.0}
    serve.run(build_app(args), name="bizra-scale", route_prefix=SCALE_PREFIX, blocking=False)
    url = chat_url(cpu_server + SCALE_PREFIX)
    try:
        deadline = time.monotonic() + 120
        while _running_voice_replicas("bizra-scale") < 2:
            assert time.monotonic() < deadline, "bizra-scale never ran 2 replicas"
            time.sleep(0.25)

        async def scenario():
            by_replica = await one_session_per_replica(url)
            streams = list(by_replica.values())
            done, _ = await asyncio.wait([s.task for s in streams], timeout=DOWNSCALE_DELAY_S + 60,
                                         return_when=asyncio.FIRST_COMPLETED)
            assert done, "no replica was stopped by the autoscaler"
            drained = next(s for s in streams if s.task in done)
            kept = next(s for s in streams if s is not drained)
            kept_id = next(r for r, s in by_replica.items() if s is kept)
            frames_at_drain = kept.frames
            await frames_past(kept, frames_at_drain + 10)  # the other replica's session never noticed
            kept.pause.set()
            landed = await reconnect_lands_on(url)
            kept.stop.set()
            await asyncio.wait_for(kept.task, 60)
            return drained, kept, kept_id, landed, frames_at_drain

        drained, kept, kept_id, landed, frames_at_drain = asyncio.run(scenario())
        notices = [e for e in drained.events if e.get("type") == "session.draining"]
        assert notices and "downscale" in notices[0]["reason"], (drained.close, drained.errors, drained.events[-3:])
        assert drained.close[0] == 1001 and "reconnect" in drained.close[1], drained.close
        assert drained.errors and "reconnect" in drained.errors[-1], drained.errors
        assert not [e for e in kept.events if e.get("type") == "session.draining"]
        assert kept.close[0] == 1000 and not kept.errors, (kept.close, kept.errors)
        assert kept.frames > frames_at_drain + 10  # the other replica's session never noticed
        landed, tried = landed
        assert landed == kept_id, tried
        deadline = time.monotonic() + 120  # the stopped replica is gone once Serve has finished stopping it
        while _running_voice_replicas("bizra-scale") != 1:
            assert time.monotonic() < deadline, serve.status().applications.get("bizra-scale")
            time.sleep(0.25)
    finally:
        with contextlib.suppress(Exception):
            serve.delete("bizra-scale")
