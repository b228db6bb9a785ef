"""The ``openai`` knowledge backend against real OpenAI-compatible servers, without Ray.

The model path: ``transformers serve`` (from ``transformers[serving]``) serving the tiny random Qwen on the
CPU, started by the test on a free loopback port (bounded start-up wait, stopped in a finally). Its
``GET /v1/models`` answers 500, so the health probe proves it with a one-token completion. Killing it
mid-use: the next completion fails at once with the reason and the health says down; nothing waits for
a timeout. The tool-call path: the SCRIPTED OpenAI-compatible server of tests/scripted_gateway.py (random
weights never call a tool) with real MCP tools.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bizra_voice.knowledge.answer_loop import answer_events
from bizra_voice.knowledge.config import KnowledgeConfig, ToolsConfig
from bizra_voice.knowledge.gateway import GatewayError, GatewayModel
from bizra_voice.knowledge.messages import question_messages
from bizra_voice.knowledge.tools.calls import ToolCall
from bizra_voice.knowledge.tools.mcp_toolbox import McpToolbox
from tests._ports import free_port
from tests.mcp_tools import stdio_command
from tests.scripted_gateway import Reply, ScriptedGateway, last_tool_result

TRANSFORMERS = shutil.which("transformers")
START_S = 180.0  # bound of the start-up wait (imports torch and transformers; slower on a busy machine)


def servable_tiny_qwen(folder: Path) -> Path:
    """The CPU profile's tiny random Qwen, with the tokenizer declaring its inputs: without
    ``model_input_names`` ``transformers serve`` passes ``token_type_ids`` to generate, which fails."""
    from bizra_voice.serve.tiny_qwen import make_tiny_qwen

    model = make_tiny_qwen(folder)
    config_file = model / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["model_input_names"] = ["input_ids", "attention_mask"]
    config_file.write_text(json.dumps(config))
    return model


class TransformersServe:
    """``transformers serve --device cpu --force_model DIR`` on a free port, up once it completes."""

    def __init__(self, model: Path, log: Path) -> None:
        self.model, self.log_path = model, log
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None

    def start(self) -> TransformersServe:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [TRANSFORMERS, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
             "--force_model", str(self.model)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_S
        while True:
            assert self.process.poll() is None, f"transformers serve exited: {self.log_path.read_text()[-2000:]}"
            if self._completes():
                return self
            assert time.monotonic() < deadline, f"transformers serve not up in {START_S} s: " \
                                                f"{self.log_path.read_text()[-2000:]}"
            time.sleep(0.5)

    def _completes(self) -> bool:
        body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                           "stream": True}).encode()
        request = urllib.request.Request(self.base_url + "/chat/completions", body,
                                         {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status == 200 and b"data:" in response.read()
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.log.close()


pytestmark = pytest.mark.skipif(TRANSFORMERS is None, reason="transformers[serving] is not installed")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return servable_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen-served") / "tiny-qwen2")


@pytest.fixture(scope="module")
def gateway(tiny_model, tmp_path_factory):
    server = TransformersServe(tiny_model, tmp_path_factory.mktemp("logs") / "transformers-serve.log")
    try:
        yield server.start()
    finally:
        server.stop()


def knowledge(base_url: str, model: str = "tiny", **more) -> KnowledgeConfig:
    return KnowledgeConfig(backend="openai", base_url=base_url, model=model, max_new_tokens=12, **more)


async def collect(model: GatewayModel, messages: list[dict], tools: list[dict] | None = None) -> list:
    return [item async for item in model.stream(messages, tools or [])]


def test_the_openai_backend_streams_an_answer_from_transformers_serve(gateway, tiny_model):
    async def scenario():
        model = GatewayModel(knowledge(gateway.base_url, str(tiny_model)), api_key=None)
        before = model.health.detail
        await model.probe()  # /v1/models answers 500 here: a one-token completion decides
        probed = (model.health.up, model.health.verified, model.health.detail)
        started = time.perf_counter()
        items = await collect(model, question_messages("Answer briefly.", "What is the capital of France?"))
        await model.close()
        return before, probed, items, time.perf_counter() - started

    before, probed, items, seconds = asyncio.run(scenario())
    assert before == "not probed yet" and probed == (True, True, ""), probed
    assert items and all(isinstance(i, str) and i for i in items)
    assert len(items) >= 2 and "".join(items).strip()  # streamed in pieces (12 random tokens)
    print(f"\ntransformers serve, tiny Qwen: {len(items)} pieces in {seconds * 1000:.0f} ms")


def test_a_killed_gateway_fails_the_next_completion_at_once_and_is_reported_down(tiny_model, tmp_path):
    """The gateway dies between two answers: the next one fails with the reason (not a timeout), the
    health is down with the same reason, and the probe keeps saying so, backing off."""
    server = TransformersServe(tiny_model, tmp_path / "serve.log")
    try:
        server.start()

        async def scenario():
            model = GatewayModel(knowledge(server.base_url, first_token_timeout_s=30.0), api_key=None)
            await model.probe()
            alive = await collect(model, question_messages("Be brief.", "Hello?"))
            up = model.health.up
            server.stop()
            with pytest.raises(GatewayError) as failure:
                await collect(model, question_messages("Be brief.", "And now?"))
            down = (model.health.up, model.health.detail, model.health.wait_s())
            await model.probe()
            probed = (model.health.up, model.health.detail, model.health.failures)
            await model.close()
            return alive, up, str(failure.value), down, probed

        alive, up, reason, down, probed = asyncio.run(scenario())
    finally:
        server.stop()
    assert alive and up is True
    assert reason.startswith("unreachable (")  # refused at once, not "no response within 30 s"
    assert down[0] is False and down[1] == reason and 0 < down[2] <= 1.0
    assert probed[0] is False and probed[1].startswith("unreachable (") and probed[2] == 2


def test_tool_calls_from_a_scripted_gateway_are_assembled_and_run_over_mcp():
    """A SCRIPTED OpenAI-compatible server calls get_time (arguments in two fragments), then answers with
    the tool's result; the clock is a real MCP server over stdio."""

    def script(messages, tools):
        result = last_tool_result(messages)
        if result is not None:
            return Reply([f"It is {result}."])
        assert [t["function"]["name"] for t in tools] == ["get_time"]
        return Reply(["One moment. "], [("get_time", {"timezone": "Europe/Paris"})])

    async def scenario(base_url: str):
        model = GatewayModel(knowledge(base_url, model="scripted"), api_key=None)
        await model.probe()
        toolbox = McpToolbox(ToolsConfig(mcp=[stdio_command("clock")], allow=["get_time"]))
        await toolbox.start()
        try:
            raw = await collect(model, [{"role": "user", "content": "Time in Paris?"}], toolbox.schemas())
            items = [i async for i in answer_events(model.stream, [{"role": "user", "content": "Time in Paris?"}],
                                                      toolbox)]
        finally:
            await toolbox.close()
            await model.close()
        return model.health.up, raw, items

    with ScriptedGateway(script) as server:
        up, raw, items = asyncio.run(scenario(server.base_url))
        requests = server.completions()
        probes = [r for r in server.requests if not r.get("stream")]
    assert up is True and probes == []  # /v1/models answered: no completion was spent on the probe
    assert raw[0] == "One moment. " and raw[1] == ToolCall("call_0_get_time", "get_time",
                                                           '{"timezone": "Europe/Paris"}')
    result = next(i for i in items if isinstance(i, dict) and i["type"] == "tool.result")
    assert result["ok"] and result["result"].endswith("in Europe/Paris")
    assert [i for i in items if isinstance(i, str)] == ["One moment. ", f"It is {result['result']}."]
    last = requests[-1]
    assert last["stream"] is True and last["model"] == "scripted" and last["max_tokens"] == 12
    assert last["messages"][-2]["tool_calls"][0]["function"] == {"name": "get_time",
                                                                 "arguments": '{"timezone": "Europe/Paris"}'}
    assert last["messages"][-1] == {"role": "tool", "tool_call_id": "call_0_get_time", "name": "get_time",
                                    "content": result["result"]}


def test_a_gateway_that_stalls_is_abandoned_at_its_first_token_bound():
    with ScriptedGateway(lambda messages, tools: Reply(["late"], delay_s=30.0)) as server:
        async def scenario():
            model = GatewayModel(knowledge(server.base_url, first_token_timeout_s=0.5), api_key=None)
            started = time.perf_counter()
            with pytest.raises(GatewayError) as failure:
                await collect(model, [{"role": "user", "content": "?"}])
            await model.close()
            return str(failure.value), time.perf_counter() - started

        reason, seconds = asyncio.run(scenario())
    assert reason in ("no response within 0.5 s", "no first token within 0.5 s")
    assert seconds >= 0.5
