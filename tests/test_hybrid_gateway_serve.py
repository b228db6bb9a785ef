"""Hybrid mode from an inference gateway, with MCP tools, end to end through the real Ray Serve proxy.

Two apps of the CPU dev profile (one slot, no Whisper: the questions are typed), each with
``knowledge.backend: openai``:

- ``/gw`` answers through a real ``transformers serve`` on the tiny random Qwen: the answer's tokens come
  back, in order, in the 0x02 text stream; then the gateway is killed mid-session and the next turns stay
  standalone with the reason while the session goes on.
- ``/tools`` answers through the SCRIPTED OpenAI-compatible server of tests/scripted_gateway.py (random
  weights never call a tool), with real MCP servers: the clock over stdio, the unit converter over
  streamable HTTP. Each call is seen by the client (``tool.call`` / ``tool.result``) and in the consented
  recording; its result is spoken; a slow tool leaves no dead air; a tool that times out or fails is told
  to the model, which answers; a standalone session never calls a tool. And the client's own functions on
  ``/v1/realtime``, driven by the official ``openai`` client: the call arrives as a ``function_call``
  response, the client's ``function_call_output`` + ``response.create`` resume the answer, which is spoken.

Tiny random PersonaPlex: what is said is noise; the events, their order and the guided tokens are real.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bizra_voice import protocol as P
from bizra_voice.chat_client import chat_url
from tests.conftest import BASE_URL, SERVE_PORT, wait_ready, wait_slots
from tests.mcp_tools import HERE, stdio_command
from tests.scripted_gateway import Reply, ScriptedGateway, last_tool_result
from tests.test_hybrid_serve import WAIT_S, Conversation, RealtimeConversation, sp_pieces
from tests.test_knowledge_gateway import TRANSFORMERS, TransformersServe, servable_tiny_qwen
from tests.test_knowledge_tools import free_port, wait_listening

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(TRANSFORMERS is None, reason="transformers[serving] is not installed")]

ALLOW = ["get_time", "slow_time", "convert_units"]
TOOL_TIMEOUT_S = 2.0


class Listening(Conversation):
    """A Conversation that also notes when each 0x01 audio message arrived (is the assistant still talking?)."""

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = P.decode(raw, max_bytes=1 << 24)
            if msg.kind == P.Kind.AUDIO:
                self.log.append(("audio", len(msg.payload), time.monotonic()))
                continue
            if msg.kind == P.Kind.TEXT:
                self.log.append(("text", msg.payload.decode("utf-8"), time.monotonic()))
            elif msg.kind == P.Kind.METADATA:
                self.log.append(("event", json.loads(msg.payload.decode("utf-8")), time.monotonic()))
            elif msg.kind == P.Kind.ERROR:
                self.log.append(("error", msg.payload.decode("utf-8"), time.monotonic()))
            self._new.set()

    def at(self, kind: str, where=lambda e: True) -> float:
        return next(t for k, p, t in self.log if k == "event" and p.get("type") == kind and where(p))

    def between(self, what: str, start: float, end: float) -> list:
        return [p for k, p, t in self.log if k == what and start <= t <= end]

    def of_turn(self, turn_id: int, kind: str | None = None) -> list[dict]:
        return [p for k, p, _ in self.log if k == "event" and p.get("turn_id") == turn_id
                and (kind is None or p["type"] == kind)]


async def answered(c: Conversation, turn_id: int) -> dict:
    """Wait for turn ``turn_id``'s whole answer and its guidance end; the done event."""
    done = await c.wait("knowledge.answer", where=lambda e: e.get("turn_id") == turn_id and e.get("done"))
    await c.wait("guidance.ended", where=lambda e: e.get("turn_id") == turn_id)
    return done


def app_args(cpu_args: dict, knowledge: dict, tools: dict | None = None, recordings: Path | None = None) -> dict:
    args = copy.deepcopy(cpu_args)
    args["engine"]["slots"] = 1
    args.pop("qwen", None)
    args["knowledge"] = {"backend": "openai", "max_new_tokens": 24, "first_token_timeout_s": 120.0, **knowledge}
    if tools is not None:
        args["tools"] = tools
    args["transcriber"] = {**args.get("transcriber", {}), "enabled": False}
    args["voice_server"]["debug_record_dir"] = None
    args["recording"] = {"enabled": recordings is not None, "dir": str(recordings) if recordings else None}
    return args


def deploy(args: dict, name: str, prefix: str) -> str:
    from ray import serve

    from bizra_voice.app import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
    serve.run(build_app(args), name=name, route_prefix=prefix, blocking=False)
    base = BASE_URL + prefix
    wait_ready(base)
    return base


@pytest.fixture(autouse=True)
def _slot_free(request):
    """One slot per app: a test starts once the session of the test before it has been released."""
    for app in ("gateway_app", "tools_app"):
        if app in request.fixturenames:
            wait_slots(request.getfixturevalue(app), all_free=True)


def knowledge_status(app: str) -> dict:
    from ray import serve

    return serve.get_deployment_handle("GatewayKnowledge", app_name=app).status.remote().result()


# ---- /gw: a real transformers serve ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    model = servable_tiny_qwen(tmp_path_factory.mktemp("gw-model") / "tiny-qwen2")
    server = TransformersServe(model, tmp_path_factory.mktemp("gw-logs") / "transformers-serve.log")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway_app(ray_session, cpu_args, gateway):
    from ray import serve

    args = app_args(cpu_args, {"base_url": gateway.base_url, "model": "tiny-qwen"})  # --force_model serves it
    try:
        yield deploy(args, "bizra-gw", "/gw")
    finally:
        serve.delete("bizra-gw")


def test_a_typed_question_is_answered_through_transformers_serve(gateway_app, cpu_args):
    async def scenario():
        async with Conversation(chat_url(gateway_app, mode="hybrid", seed=11)) as c:
            await c.send_event({"type": "user.text", "text": "What is the capital of France?"})
            done = await answered(c, 1)
            await c.wait_spoken(sp_pieces(cpu_args, done["tokens"]), since="router.decision")
            return c, done

    c, done = asyncio.run(scenario())
    decision = c.events("router.decision")[0]
    assert decision["mode"] == "hybrid" and "hybrid" in decision["reason"]
    partials = [e for e in c.events("knowledge.answer") if not e["done"]]
    assert partials and "".join(e["delta"] for e in partials).split() == done["text"].split()
    assert done["tokens"] and "cut" not in done
    ended = c.events("guidance.ended")[0]
    assert ended["cancelled"] is False and ended["said_tokens"] == ended["total_tokens"] == len(done["tokens"])
    status = knowledge_status("bizra-gw")
    assert status["backend"] == "openai" and status["healthy"] is True and status["answers"] >= 1
    print("\nlatency (typed question, gateway = transformers serve, CPU):",
          json.dumps(c.events("guidance.started")[0]["timings"]))


def test_the_gateway_killed_mid_session_sends_turns_standalone_with_the_reason(gateway_app, gateway):
    async def scenario():
        async with Listening(chat_url(gateway_app, mode="hybrid", seed=12)) as c:
            await c.send_event({"type": "user.text", "text": "What is the capital of France?"})
            await answered(c, 1)
            await asyncio.to_thread(gateway.stop)
            killed = time.monotonic()
            await c.send_event({"type": "user.text", "text": "And of Spain?"})
            second = await c.wait("router.decision", where=lambda e: e["turn_id"] == 2 and e["mode"] == "standalone")
            await c.send_event({"type": "user.text", "text": "And of Italy?"})
            third = await c.wait("router.decision", where=lambda e: e["turn_id"] == 3)
            await asyncio.sleep(1.0)  # the session goes on: the assistant keeps talking
            return c, killed, second, third

    c, killed, second, third = asyncio.run(scenario())
    # Either the probe already saw it (the router says unhealthy) or the turn's own completion failed.
    assert re.search(r"unhealthy: unreachable \(|failed \(unreachable \(", second["reason"]), second
    assert "gateway" in second["reason"]
    assert third["mode"] == "standalone" and "is unhealthy: unreachable (" in third["reason"], third
    assert not c.of_turn(2, "guidance.started") and not c.of_turn(3, "guidance.started")
    assert len(c.between("audio", c.at("router.decision", lambda e: e["turn_id"] == 3), time.monotonic())) > 0
    status = knowledge_status("bizra-gw")
    assert status["healthy"] is False and status["detail"].startswith("unreachable (")
    print(f"\ngateway killed: turn 2 -> {second['reason']!r}; turn 3 -> {third['reason']!r}; "
          f"{time.monotonic() - killed:.1f} s for both")


# ---- /tools: a scripted tool-calling gateway and real MCP servers ---------------------------------------------
def tool_script(messages: list[dict], tools: list[dict]) -> Reply:
    """The SCRIPTED model: which tool a question calls, and an answer that says the tool's result."""
    result = last_tool_result(messages)
    if result is not None:
        return Reply([f"The tool says {result}."])
    question = messages[-1]["content"]
    if not tools:
        return Reply(["No tools today."])
    if "very slowly" in question:
        return Reply([], [("slow_time", {"delay_s": 30})])
    if "slowly" in question:
        return Reply([], [("slow_time", {"delay_s": 1.5})])
    if "Mars" in question:
        return Reply([], [("get_time", {"timezone": "Mars/Olympus_Mons"})])
    if "miles" in question:
        return Reply([], [("convert_units", {"value": 10, "from_unit": "km", "to_unit": "mile"})])
    if "weather" in question and "get_weather" in {t["function"]["name"] for t in tools}:  # the client's function
        return Reply(["Let me look. "], [("get_weather", {"city": "Paris"})])
    if "Paris" in question:  # no preamble: the first word waits for the tool
        return Reply([], [("get_time", {"timezone": "Europe/Paris"})])
    if "Tokyo" in question:
        return Reply(["One moment. "], [("get_time", {"timezone": "Asia/Tokyo"})])
    return Reply(["No tool needed."])


@pytest.fixture(scope="module")
def scripted():
    with ScriptedGateway(tool_script) as server:
        yield server


@pytest.fixture(scope="module")
def units_server():
    port = free_port()
    process = subprocess.Popen([sys.executable, str(HERE), "units", "--http", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tool-recordings")


@pytest.fixture(scope="module")
def tools_app(ray_session, cpu_args, scripted, units_server, recordings):
    from ray import serve

    tools = {"mcp": [stdio_command("clock"), {"name": "units", "url": units_server}], "allow": ALLOW,
             "call_timeout_s": TOOL_TIMEOUT_S}
    args = app_args(cpu_args, {"base_url": scripted.base_url, "model": "scripted"}, tools, recordings)
    try:
        base = deploy(args, "bizra-tools", "/tools")
        wait_tools_offered("bizra-tools", ALLOW)
        yield base
    finally:
        serve.delete("bizra-tools")


def wait_tools_offered(app: str, names: list[str], timeout_s: float = 300.0) -> None:
    """Until every MCP server the tests use is connected and its tools offered: a stdio server is a Python
    process that may take long to start on a busy machine (the toolbox retries it in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = knowledge_status(app).get("tools") or {}
        offered = set(status.get("offered") or [])
        if offered >= set(names):
            return
        assert time.monotonic() < deadline, f"tools offered after {timeout_s:g} s: {sorted(offered)}; {status}"
        time.sleep(1.0)


def finished_recording(root: Path, session_id: str, timeout_s: float = WAIT_S) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        for folder in root.glob(f"*-{session_id}"):
            text = (folder / "events.jsonl").read_text() if (folder / "events.jsonl").exists() else ""
            if '"recording.stopped"' in text:
                return [json.loads(line) for line in text.splitlines()]
        assert time.monotonic() < deadline, f"no finished recording of {session_id} in {root}"
        time.sleep(0.2)


def test_tool_calls_over_mcp_are_shown_recorded_and_their_results_spoken(tools_app, scripted, recordings, cpu_args):
    async def scenario():
        async with Listening(chat_url(tools_app, mode="hybrid", seed=21, record=1)) as c:
            await c.send_event({"type": "user.text", "text": "What time is it in Tokyo?"})
            first = await answered(c, 1)
            await c.wait_spoken(sp_pieces(cpu_args, first["tokens"]), since="tool.result")
            await c.send_event({"type": "user.text", "text": "How many miles are 10 km?"})
            second = await answered(c, 2)
            session = c.events("session.started")[0]["session_id"]
        return c, first, second, session

    c, first, second, session = asyncio.run(scenario())
    turn = [e["type"] for e in c.of_turn(1)]
    assert turn.index("router.decision") < turn.index("tool.call") < turn.index("tool.result")
    assert turn.index("tool.result") < turn.index("guidance.ended")
    call, result = c.of_turn(1, "tool.call")[0], c.of_turn(1, "tool.result")[0]
    assert call["name"] == "get_time" and call["arguments"] == {"timezone": "Asia/Tokyo"}
    assert result["call_id"] == call["call_id"] and result["ok"] is True and result["ms"] > 0
    assert result["result"].endswith("in Asia/Tokyo")  # the real clock answered
    assert first["text"] == f"One moment. The tool says {result['result']}." and "cut" not in first
    assert first["timings"]["tool_calls"] == 1 and first["timings"]["tool_ms"] == result["ms"]
    # the SCRIPTED model was offered the allowed tools and given the real result
    asked = [r for r in scripted.completions() if r["messages"][-1].get("role") == "tool"]
    assert any(r["messages"][-1]["content"] == result["result"] for r in asked)
    assert {t["function"]["name"] for t in scripted.completions()[0]["tools"]} == set(ALLOW)
    # over streamable HTTP
    units = c.of_turn(2, "tool.result")[0]
    assert units["name"] == "convert_units" and units["ok"] and units["result"] == "10 km = 6.214 mile"
    assert second["text"] == "The tool says 10 km = 6.214 mile."
    # in the consented recording
    lines = finished_recording(recordings, session)
    recorded = [(x["type"], x.get("turn_id"), x.get("name")) for x in lines if x["type"].startswith("tool.")]
    assert recorded == [("tool.call", 1, "get_time"), ("tool.result", 1, "get_time"),
                        ("tool.call", 2, "convert_units"), ("tool.result", 2, "convert_units")]
    timings = c.of_turn(1, "guidance.started")[0]["timings"]
    print("\nlatency (typed question + one MCP tool call over stdio, scripted gateway, CPU):", json.dumps(timings))
    print("latency (typed question + one MCP tool call over HTTP, scripted gateway, CPU):",
          json.dumps(c.of_turn(2, "guidance.started")[0]["timings"]))


def test_a_slow_tool_leaves_no_dead_air_and_its_answer_is_spoken(tools_app, cpu_args):
    """While the tool works (1.5 s, within its timeout) PersonaPlex keeps talking on its own: audio keeps
    coming, nothing is guided; then the answer is spoken."""

    async def scenario():
        async with Listening(chat_url(tools_app, mode="hybrid", seed=22)) as c:
            await c.send_event({"type": "user.text", "text": "What time is it, slowly?"})
            done = await answered(c, 1)
            await c.wait_spoken(sp_pieces(cpu_args, done["tokens"]), since="tool.result")
            return c, done

    c, done = asyncio.run(scenario())
    called, returned = c.at("tool.call"), c.at("tool.result")
    result = c.of_turn(1, "tool.result")[0]
    assert result["ok"] and result["ms"] >= 1500 - 1
    audio = c.between("audio", called, returned)
    assert len(audio) >= 3, f"{len(audio)} audio messages in the {returned - called:.2f} s the tool worked"
    assert c.at("guidance.started") > returned  # no answer word before the answer existed
    assert [d["mode"] for d in c.of_turn(1, "router.decision")] == ["hybrid"]  # no fallback
    assert done["text"] == f"The tool says {result['result']}."


@pytest.mark.parametrize("question, error", [
    ("What time is it, very slowly?", f"no result within {TOOL_TIMEOUT_S:g} s"),
    ("What time is it on Mars?", "unknown time zone 'Mars/Olympus_Mons'"),
], ids=["timeout", "tool-error"])
def test_a_tool_that_times_out_or_fails_is_told_to_the_model_which_answers(tools_app, cpu_args, question, error):
    async def scenario():
        async with Listening(chat_url(tools_app, mode="hybrid", seed=23)) as c:
            await c.send_event({"type": "user.text", "text": question})
            done = await answered(c, 1)
            await c.wait_spoken(sp_pieces(cpu_args, done["tokens"]), since="tool.result")
            return c, done

    c, done = asyncio.run(scenario())
    result = c.of_turn(1, "tool.result")[0]
    assert result["ok"] is False and error in result["error"] and "result" not in result
    assert done["text"].startswith("The tool says error: ") and error in done["text"]
    assert c.of_turn(1, "guidance.ended")[0]["reason"] == "spoken"


def test_a_standalone_session_never_calls_a_tool(tools_app, scripted):
    before_calls = knowledge_status("bizra-tools")["tools"]["calls"]
    before_requests = len(scripted.completions())

    async def scenario():
        async with Conversation(chat_url(tools_app, mode="standalone")) as c:
            await c.send_event({"type": "user.text", "text": "What time is it in Tokyo?"})
            decision = await c.wait("router.decision")
            return c, decision

    c, decision = asyncio.run(scenario())
    assert decision["mode"] == "standalone" and "never called" in decision["reason"]
    assert not c.events("tool.call") and not c.events("knowledge.answer")
    status = knowledge_status("bizra-tools")
    assert status["tools"]["calls"] == before_calls and len(scripted.completions()) == before_requests
    assert sorted(status["tools"]["offered"]) == sorted(ALLOW)


def test_the_browser_client_shows_each_tool_call_and_its_result(tools_app):
    """The bundled page (Chromium, fake microphone): a typed question's tool call appears as one line that
    its result completes."""
    from tests.test_browser_e2e import SPEECH_WAV, WAIT_MS, chromium_path

    chromium = chromium_path()
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={SPEECH_WAV}", "--autoplay-policy=no-user-gesture-required"])
        try:
            context = browser.new_context()
            context.grant_permissions(["microphone"])
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            page.goto(tools_app + "/", wait_until="networkidle")
            page.get_by_role("button", name="Connect and talk").click()
            page.wait_for_selector('body[data-state="connected"]', state="attached", timeout=WAIT_MS)
            page.fill("#ask", "How many miles are 10 km?")
            page.click("#ask-send")
            page.wait_for_selector('.entry.tool[data-ok="true"]', timeout=WAIT_MS)
            shown = page.locator(".entry.tool .text").all_inner_texts()
            page.wait_for_selector('.entry.knowledge[data-done="true"]', timeout=WAIT_MS)
            answer = page.locator(".entry.knowledge .text").first.inner_text()
            page.get_by_role("button", name="Disconnect").click()
            page.wait_for_selector('body[data-state="closed"]', state="attached", timeout=WAIT_MS)
        finally:
            browser.close()
    assert len(shown) == 1 and shown[0].startswith(
        'Tool convert_units({"value":10,"from_unit":"km","to_unit":"mile"}) → 10 km = 6.214 mile · '), shown
    assert shown[0].endswith(" ms") and answer == "The tool says 10 km = 6.214 mile."
    assert errors == [], errors


WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city, now.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_realtime_function_calling_with_the_openai_client(tools_app, scripted, cpu_args):
    """``session.update`` declares the client's function; a typed question makes the (SCRIPTED) model call
    it: a function_call response (GA events, validated against the openai package's models); the client's
    function_call_output + response.create resume the answer, and PersonaPlex speaks it. A late output for
    the same call is refused with the reason."""
    from openai.types.realtime import (
        ConversationItemAdded,
        ResponseDoneEvent,
        ResponseFunctionCallArgumentsDeltaEvent,
        ResponseFunctionCallArgumentsDoneEvent,
        ResponseOutputItemAddedEvent,
    )

    output = '{"sky": "sunny", "temp_c": 21}'

    async def scenario():
        async with RealtimeConversation(tools_app, {"type": "realtime", "mode": "hybrid", "tools": [WEATHER],
                                                    "tool_choice": "auto"}) as c:
            updated = await c.wait("session.updated")
            await c.type("What is the weather in Paris?")
            args = await c.wait("response.function_call_arguments.done")
            await c.conn.conversation.item.create(item={"type": "function_call_output",
                                                        "call_id": args["call_id"], "output": output})
            await c.conn.response.create()
            await c.wait("bizra.knowledge.resumed")
            done = await until_event(c, lambda e: e["type"] == "bizra.knowledge.answer" and e.get("done")
                                     and e["turn_id"] == 2)
            await until_event(c, lambda e: e["type"] == "bizra.guidance.ended" and e["turn_id"] == 2)
            await c.wait_spoken(sp_pieces(cpu_args, done["tokens"]), since="bizra.knowledge.resumed")
            await c.conn.conversation.item.create(item={"type": "function_call_output",
                                                        "call_id": args["call_id"], "output": "again"})
            late = await c.wait("error")
            return c, updated, args, done, late

    c, updated, args, done, late = asyncio.run(scenario())
    assert [t["name"] for t in updated["session"]["tools"]] == ["get_weather"]
    kinds = [e["type"] for e in c.events]
    at = kinds.index("response.function_call_arguments.done")
    call_response = [e for e in c.events[:at] if e["type"] == "response.created"][-1]
    added = ResponseOutputItemAddedEvent.model_validate(next(e for e in c.events[:at]
                                                             if e["type"] == "response.output_item.added"
                                                             and e["item"]["type"] == "function_call"))
    delta = ResponseFunctionCallArgumentsDeltaEvent.model_validate(
        next(e for e in c.events if e["type"] == "response.function_call_arguments.delta"))
    call = ResponseFunctionCallArgumentsDoneEvent.model_validate(args)
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert delta.delta == call.arguments and added.item.call_id == call.call_id == delta.call_id
    assert call.response_id == call_response["response"]["id"]
    finished = ResponseDoneEvent.model_validate(next(e for e in c.events[at:] if e["type"] == "response.done"))
    assert finished.response.status == "completed" and finished.response.output[0].call_id == call.call_id
    echoed = [ConversationItemAdded.model_validate(e) for e in c.events
              if e["type"] == "conversation.item.added" and e["item"]["type"] == "function_call_output"]
    assert len(echoed) == 1 and echoed[0].item.output == output
    # what was said before the call ("Let me look.") was spoken as turn 1; the answer with the output as turn 2
    first = next(e for e in c.events if e["type"] == "bizra.knowledge.answer" and e.get("done") and e["turn_id"] == 1)
    assert first["text"] == "Let me look." and done["text"] == f"The tool says {output}."
    resumed = next(e for e in c.events if e["type"] == "bizra.knowledge.resumed")
    assert resumed["resumes"] == 1 and resumed["call_ids"] == [call.call_id]
    # the (scripted) model was offered the client's function beside the server's, and given the output
    asked = scripted.completions()
    offered = next(r for r in asked if r["messages"][-1].get("content") == "What is the weather in Paris?")
    assert "get_weather" in {t["function"]["name"] for t in offered["tools"]}
    given = next(r for r in asked if r["messages"][-1].get("role") == "tool"
                 and r["messages"][-1]["tool_call_id"] == call.call_id)
    assert given["messages"][-1]["content"] == output
    assert given["messages"][-2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert late["error"]["code"] == "call_not_awaited" and late["error"]["param"] == "item.call_id"
    started = next(e for e in c.events if e["type"] == "bizra.guidance.started" and e["turn_id"] == 2)
    print("\nlatency (Realtime function call: function output -> first guided word, scripted gateway, CPU):",
          json.dumps(started["timings"]))


async def until_event(c: RealtimeConversation, where, timeout_s: float = WAIT_S) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        found = [e for e in c.events if where(e)]
        if found:
            return found[0]
        assert not [e for e in c.events if e["type"] == "error"], c.events
        assert time.monotonic() < deadline, [e["type"] for e in c.events if "delta" not in e["type"]]
        await asyncio.sleep(0.05)
