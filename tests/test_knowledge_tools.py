"""Server-side tools over MCP, without Ray: real MCP servers (tests/mcp_tools.py, the ``mcp`` SDK) over stdio
and streamable HTTP, the toolbox's allow-list, timeout, error and size paths, and the answer loop that runs a
model's calls and gives it the results. The model side of the loop is a scripted stand-in (random weights
never call a tool); the tools are real."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bizra_voice.knowledge.answer_loop import answer_events
from bizra_voice.knowledge.config import ToolsConfig
from bizra_voice.knowledge.tools.calls import ToolCall, cut_to
from bizra_voice.knowledge.tools.mcp_toolbox import McpToolbox
from tests._ports import free_port
from tests.mcp_tools import HERE, stdio_command

ALLOW = ["get_time", "slow_time", "leap_years", "convert_units"]


def wait_listening(port: int, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the MCP server exited with {process.returncode}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on {port} within {timeout_s} s")


@pytest.fixture(scope="module")
def units_url():
    """The unit converter over streamable HTTP, in its own process (stopped at the end)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(HERE), "units", "--http", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=10)


def tools_config(units_url: str, **limits) -> ToolsConfig:
    return ToolsConfig(mcp=[stdio_command("clock"), {"name": "units", "url": units_url}],
                       allow=limits.pop("allow", ALLOW), **limits)


async def with_toolbox(config: ToolsConfig, body):
    toolbox = McpToolbox(config)
    await toolbox.start()
    try:
        return await body(toolbox)
    finally:
        await toolbox.close()


def call(name: str, arguments: dict | str, call_id: str = "call_1") -> ToolCall:
    return ToolCall(call_id, name, arguments if isinstance(arguments, str) else json.dumps(arguments))


def test_tools_of_both_transports_are_offered_and_called(units_url):
    async def body(toolbox: McpToolbox):
        schemas = toolbox.schemas()
        tokyo = await toolbox.call(call("get_time", {"timezone": "Asia/Tokyo"}))
        miles = await toolbox.call(call("convert_units", {"value": 10, "from_unit": "km", "to_unit": "mile"}))
        return schemas, tokyo, miles, toolbox.describe()

    schemas, tokyo, miles, described = asyncio.run(with_toolbox(tools_config(units_url), body))
    by_name = {s["function"]["name"]: s for s in schemas}
    assert set(by_name) == set(ALLOW)
    assert by_name["get_time"]["type"] == "function"
    assert by_name["get_time"]["function"]["parameters"]["properties"]["timezone"]["type"] == "string"
    assert "IANA time zone" in by_name["get_time"]["function"]["description"]
    assert by_name["convert_units"]["function"]["parameters"]["required"] == ["value", "from_unit", "to_unit"]
    now = datetime.now(ZoneInfo("Asia/Tokyo"))
    assert tokyo.ok and tokyo.error is None and tokyo.text.endswith("in Asia/Tokyo") and tokyo.ms > 0
    assert tokyo.text[:2] in {f"{now.hour:02d}", f"{(now.hour - 1) % 24:02d}"}  # a minute may have turned
    assert miles.ok and miles.text == "10 km = 6.214 mile"
    assert {s["name"]: s["transport"] for s in described["servers"]} == {"clock": "stdio", "units": "streamable-http"}
    assert all(s["alive"] and s["error"] is None for s in described["servers"]) and described["calls"] == 2


def test_only_allowed_tools_are_offered_or_run(units_url):
    async def body(toolbox: McpToolbox):
        return ([s["function"]["name"] for s in toolbox.schemas()],
                await toolbox.call(call("convert_units", {"value": 1, "from_unit": "m", "to_unit": "cm"})),
                await toolbox.call(call("no_such_tool", {})), toolbox.calls)

    offered, refused, unknown, calls = asyncio.run(with_toolbox(tools_config(units_url, allow=["get_time"]), body))
    assert offered == ["get_time"]
    assert not refused.ok and refused.error == "the tool 'convert_units' is not available"
    assert refused.text == "error: the tool 'convert_units' is not available"
    assert not unknown.ok and "not available" in unknown.error
    assert calls == 0  # neither reached a server


def test_tool_errors_bad_arguments_and_timeouts_are_results_for_the_model(units_url):
    config = tools_config(units_url, call_timeout_s=0.5)

    async def body(toolbox: McpToolbox):
        return [await toolbox.call(c) for c in (
            call("get_time", {"timezone": "Mars/Olympus_Mons"}),
            call("convert_units", {"value": 3, "from_unit": "kg", "to_unit": "mile"}),
            call("get_time", '{"timezone": "Europe/Par'),
            call("get_time", '["Europe/Paris"]'),
            call("slow_time", {"delay_s": 30}),
            call("get_time", {"timezone": "Europe/Paris"}),  # the session is still fine after the timeout
        )]

    zone, units, truncated, not_object, slow, after = asyncio.run(with_toolbox(config, body))
    assert not zone.ok and "unknown time zone 'Mars/Olympus_Mons'" in zone.error
    assert zone.text.startswith("error: ")
    assert not units.ok and "cannot convert 'kg' to 'mile'" in units.error
    assert not truncated.ok and truncated.error.startswith("the arguments are not a JSON object")
    assert not not_object.ok and not_object.error.startswith("the arguments are not a JSON object")
    assert not slow.ok and slow.error == "no result within 0.5 s" and slow.ms >= 500
    assert after.ok and after.text.endswith("in Europe/Paris")


def test_a_long_result_is_cut_to_the_limit(units_url):
    config = tools_config(units_url, max_result_chars=120)

    async def body(toolbox: McpToolbox):
        return await toolbox.call(call("leap_years", {"start": 1, "end": 4000}))

    result = asyncio.run(with_toolbox(config, body))
    assert result.ok and result.cut and len(result.text) <= 120
    assert result.text.startswith("4, 8, 12") and "more characters]" in result.text
    text, cut = cut_to("short", 120)
    assert (text, cut) == ("short", False)


def test_a_server_that_does_not_start_is_not_offered_and_the_others_work(units_url, tmp_path):
    missing = {"name": "ghost", "command": sys.executable, "args": [str(tmp_path / "no_such_server.py")]}
    config = ToolsConfig(mcp=[missing, {"name": "units", "url": units_url}], allow=ALLOW, connect_timeout_s=10)

    async def body(toolbox: McpToolbox):
        return (toolbox.describe(), [s["function"]["name"] for s in toolbox.schemas()],
                await toolbox.call(call("get_time", {})),
                await toolbox.call(call("convert_units", {"value": 0, "from_unit": "C", "to_unit": "F"})))

    described, offered, unreachable, works = asyncio.run(with_toolbox(config, body))
    ghost = next(s for s in described["servers"] if s["name"] == "ghost")
    assert not ghost["alive"] and ghost["error"]
    assert offered == ["convert_units"]
    assert not unreachable.ok and "not reachable" in unreachable.error
    assert works.ok and works.text == "0 C = 32 F"


class ScriptedModel:
    """A stand-in for the knowledge model's turns (random weights never call a tool): each turn is a list of
    text pieces and ToolCalls; it records the messages and the tools it was given."""

    def __init__(self, turns: list[list]) -> None:
        self.turns = list(turns)
        self.seen: list[tuple[list[dict], list[str]]] = []

    async def __call__(self, messages, tools):
        self.seen.append(([dict(m) for m in messages], [t["function"]["name"] for t in tools]))
        for item in self.turns.pop(0):
            await asyncio.sleep(0)
            yield item


def test_the_answer_loop_runs_the_calls_and_gives_the_model_the_results(units_url):
    model = ScriptedModel([
        ["Let me check. ", ToolCall("c1", "get_time", '{"timezone": "Asia/Tokyo"}'),
         ToolCall("c2", "convert_units", '{"value": 5, "from_unit": "km", "to_unit": "m"}')],
        ["It is late in ", "Tokyo."],
    ])
    question = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Time in Tokyo?"}]

    async def body(toolbox: McpToolbox):
        return [item async for item in answer_events(model, question, toolbox, max_calls=3)]

    items = asyncio.run(with_toolbox(tools_config(units_url), body))
    texts = [i for i in items if isinstance(i, str)]
    events = [i for i in items if isinstance(i, dict)]
    assert texts == ["Let me check. ", "It is late in ", "Tokyo."]
    assert [(e["type"], e["name"]) for e in events] == [("tool.call", "get_time"), ("tool.result", "get_time"),
                                                         ("tool.call", "convert_units"),
                                                         ("tool.result", "convert_units")]
    assert events[0]["arguments"] == {"timezone": "Asia/Tokyo"} and events[0]["call_id"] == "c1"
    assert events[1]["ok"] is True and events[1]["result"].endswith("in Asia/Tokyo") and events[1]["ms"] > 0
    assert events[3]["result"] == "5 km = 5000 m"
    # the second turn saw the calls and their results, and was offered the tools again
    messages, offered = model.seen[1]
    assert set(offered) == set(ALLOW)
    assistant, tool_1, tool_2 = messages[-3:]
    assert assistant["role"] == "assistant" and assistant["content"] == "Let me check. "
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["get_time", "convert_units"]
    assert tool_1 == {"role": "tool", "tool_call_id": "c1", "name": "get_time", "content": events[1]["result"]}
    assert tool_2["tool_call_id"] == "c2" and tool_2["content"] == "5 km = 5000 m"


def test_the_answer_loop_stops_offering_tools_after_max_calls(units_url):
    endless = [ToolCall(f"c{i}", "get_time", "{}") for i in range(3)]
    model = ScriptedModel([endless, [ToolCall("c9", "get_time", "{}")], ["Done."]])

    async def body(toolbox: McpToolbox):
        return [item async for item in answer_events(model, [{"role": "user", "content": "?"}], toolbox,
                                                      max_calls=2)]

    items = asyncio.run(with_toolbox(tools_config(units_url), body))
    calls = [i for i in items if isinstance(i, dict) and i["type"] == "tool.call"]
    assert [c["call_id"] for c in calls] == ["c0", "c1"]  # the third call of the turn is not run
    assert model.seen[1][1] == []  # no tools offered any more: the model must answer
    assert [i for i in items if isinstance(i, str)] == []  # it called again without tools: the answer ends
    assistant = model.seen[1][0][-3]
    assert [c["id"] for c in assistant["tool_calls"]] == ["c0", "c1"]  # every call in the history has its result


def test_a_tool_error_goes_back_to_the_model(units_url):
    model = ScriptedModel([[ToolCall("c1", "get_time", '{"timezone": "Atlantis/Capital"}')],
                           ["I could not read that clock."]])

    async def body(toolbox: McpToolbox):
        return [item async for item in answer_events(model, [{"role": "user", "content": "?"}], toolbox)]

    items = asyncio.run(with_toolbox(tools_config(units_url), body))
    result = next(i for i in items if isinstance(i, dict) and i["type"] == "tool.result")
    assert result["ok"] is False and "unknown time zone 'Atlantis/Capital'" in result["error"]
    assert "result" not in result
    assert model.seen[1][0][-1]["content"].startswith("error: ") and items[-1] == "I could not read that clock."


def test_a_stdio_server_that_dies_is_told_and_reopened(units_url):
    """The clock's process is killed: the next call is an error result at once (the session is closed),
    its tools are not offered meanwhile, and the toolbox starts the server again in the background."""
    import psutil

    async def body(toolbox: McpToolbox):
        before = await toolbox.call(call("get_time", {"timezone": "UTC"}))
        clocks = [p for p in psutil.Process().children(recursive=True) if str(HERE) in " ".join(p.cmdline())
                  and "clock" in p.cmdline()]
        for process in clocks:
            process.kill()
        gone = await toolbox.call(call("get_time", {"timezone": "UTC"}))
        deadline = time.monotonic() + 60.0
        offered = []
        while "get_time" not in offered:  # reopened in the background (backing off from 1 s)
            assert time.monotonic() < deadline, toolbox.describe()
            await asyncio.sleep(0.2)
            offered = [s["function"]["name"] for s in toolbox.schemas()]
        back = await toolbox.call(call("get_time", {"timezone": "UTC"}))
        return before, len(clocks), gone, back

    before, killed, gone, back = asyncio.run(with_toolbox(tools_config(units_url), body))
    assert before.ok and killed == 1
    assert not gone.ok and gone.error == "the MCP server clock failed: Connection closed"
    assert back.ok and back.text.endswith("in UTC")
