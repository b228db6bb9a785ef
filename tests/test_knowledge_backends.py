"""The knowledge backends' pure parts and the config sections, plus the local backend on the tiny random Qwen.

Qwen2.5's tool-call blocks read back from a stream cut anywhere; the gateway's health backing off; the
``knowledge:`` / ``tools:`` sections with their one-sentence errors, and the old ``qwen:`` section still
read (with a deprecation line). The local backend runs the real tiny model (random weights: its text is
gibberish, and it never calls a tool, so only the streaming and the stop are checked there).
"""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml

from bizra_voice.app import build_app, deployment_options, load_config
from bizra_voice.config import AppConfig
from bizra_voice.config_errors import ConfigError
from bizra_voice.knowledge.config import KnowledgeConfig
from bizra_voice.knowledge.gateway_health import GatewayHealth
from bizra_voice.knowledge.local import for_chat_template
from bizra_voice.knowledge.qwen_tool_calls import QwenToolCallParser
from bizra_voice.knowledge.tools.calls import ToolCall
from tests.test_app_config import REPO

CALL = '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}\n</tool_call>'


def parse(pieces: list[str]) -> tuple[list[str], list[ToolCall]]:
    parser = QwenToolCallParser()
    out = [parser.feed(p) for p in pieces]
    out.append(parser.finish())
    return [o for o in out if o], parser.calls


@pytest.mark.parametrize("size", [1, 2, 3, 5, 11, 1000])
def test_qwen_tool_calls_are_read_from_a_stream_cut_anywhere(size):
    text = "Let me check <the> clock. " + CALL + "\n" + CALL.replace("Asia/Tokyo", "UTC")
    spoken, calls = parse([text[i:i + size] for i in range(0, len(text), size)])
    said = "".join(spoken)
    assert "<tool_call>" not in said and "</tool_call>" not in said and "get_time" not in said
    assert said.startswith("Let me check <the> clock. ")  # a "<" that starts no marker is said
    assert calls == [ToolCall("call_1", "get_time", '{"timezone": "Asia/Tokyo"}'),
                     ToolCall("call_2", "get_time", '{"timezone": "UTC"}')]


def test_text_that_only_looks_like_a_marker_start_is_released_at_the_end():
    spoken, calls = parse(["The answer is <tool"])
    assert "".join(spoken) == "The answer is <tool" and calls == []


def test_a_broken_or_unterminated_call_becomes_a_call_the_toolset_refuses():
    _, calls = parse(["<tool_call>{not json}</tool_call>"])
    assert calls == [ToolCall("call_1", "", "{not json}")]
    _, calls = parse(['<tool_call>\n{"name": "get_time", "arguments": {}}'])  # the answer ended inside it
    assert calls == [ToolCall("call_1", "get_time", "{}")]


def test_chat_template_messages_carry_arguments_as_objects():
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": '{"timezone": "UTC"}'}},
        {"id": "c2", "type": "function", "function": {"name": "x", "arguments": "not json"}}]}
    adapted = for_chat_template(message)
    assert adapted["content"] == ""
    assert adapted["tool_calls"][0]["function"]["arguments"] == {"timezone": "UTC"}
    assert adapted["tool_calls"][1]["function"]["arguments"] == "not json"
    assert message["tool_calls"][0]["function"]["arguments"] == '{"timezone": "UTC"}'  # not changed in place
    plain = {"role": "user", "content": "hi"}
    assert for_chat_template(plain) is plain


def test_gateway_health_backs_off_while_down_and_recovers():
    now = [100.0]
    health = GatewayHealth(interval_s=5.0, backoff_max_s=8.0, clock=lambda: now[0])
    assert not health.up and health.detail == "not probed yet" and health.wait_s() == 0.0
    waits = []
    for _ in range(5):
        health.failed("unreachable (ConnectError)")
        waits.append(health.wait_s())
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert not health.up and health.detail == "unreachable (ConnectError)" and not health.verified
    health.answered()
    assert health.up and health.verified and health.detail == "" and health.wait_s() == 5.0
    health.failed("answered HTTP 502")
    assert health.wait_s() == 1.0 and not health.verified  # the count starts again
    health.listed()
    assert health.up and not health.verified and health.failures == 0


def shipped(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())["applications"][0]["args"]


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.cpu.yaml", "serve_config.laptop.yaml"])
def test_shipped_profiles_use_the_knowledge_section_and_show_a_gateway(name):
    args = shipped(name)
    assert "qwen" not in args and args["knowledge"]["backend"] == "local"
    config = AppConfig.model_validate(args)
    assert config.deprecations == [] and config.qwen.enabled and config.qwen.model == config.knowledge.model
    text = (REPO / name).read_text()
    assert "#     backend: openai" in text and "#     base_url: http://" in text and "#   tools:" in text


def test_the_old_qwen_section_is_read_with_a_deprecation_line(serve_log):
    args = shipped("serve_config.cpu.yaml")
    args["qwen"] = args.pop("knowledge")
    del args["qwen"]["backend"]
    config = load_config(args)
    assert config.knowledge.tiny_random and config.knowledge.max_new_tokens == 24
    assert config.deprecations == ["`args.qwen` is deprecated: rename the section to `args.knowledge` (same "
                                   "keys; `backend: local` is the default, `backend: openai` uses a gateway)"]
    again = AppConfig.model_validate(config.model_dump(mode="json"))  # what each replica reads
    assert again.deprecations == [] and again.knowledge == config.knowledge
    build_app(args)
    assert config.deprecations[0] in serve_log.text


def test_a_gateway_config_reserves_no_gpu_and_names_its_deployment():
    args = shipped("serve_config.yaml")
    args["knowledge"] = {"backend": "openai", "base_url": "http://10.0.0.5:8000/v1", "model": "qwen2.5:1.5b",
                         "num_gpus": 0.2}
    config = AppConfig.model_validate(args)
    opts = deployment_options(config)
    assert "QwenKnowledge" not in opts and opts["GatewayKnowledge"]["ray_actor_options"]["num_gpus"] == 0.0
    assert not config.qwen.enabled and config.knowledge.label == "gateway qwen2.5:1.5b"


SENTENCES = [
    ({"knowledge": {"backend": "openai"}},
     "Invalid `args.knowledge`: backend openai needs `base_url`, the gateway's API root such as "
     "http://127.0.0.1:8001/v1."),
    ({"knowledge": {"backend": "openai", "base_url": "10.0.0.5:8000"}},
     "Invalid `args.knowledge`: `base_url` must start with http:// or https://, not '10.0.0.5:8000'."),
    ({"knowledge": {"backend": "opena"}},
     "`args.knowledge.backend` must be one of 'local' or 'openai', not 'opena' — did you mean 'openai'?"),
    ({"knowledge": {"first_token_timeout_s": 0}},
     "`args.knowledge.first_token_timeout_s` must be greater than 0, not 0."),
    ({"qwen": {"base_url": "http://x/v1"}}, "Unknown key `args.qwen.base_url` — did you mean `args.knowledge.base_url`?"),
    ({"qwen": {}, "knowledge": {}}, "Invalid `args`: `qwen` is the old name of `knowledge`: keep only the "
     "`knowledge` section."),
    ({"tools": {"mcp": [{"name": "clock"}]}}, "Invalid `args.tools.mcp[0]`: MCP server 'clock' needs exactly one of "
     "`command` (stdio) or `url` (streamable HTTP)."),
    ({"tools": {"mcp": [{"name": "clock", "command": "c"}, {"name": "clock", "url": "http://h/mcp"}]}},
     "Invalid `args.tools`: MCP server names must be unique; clock is given more than once."),
    ({"tools": {"mcp": [{"name": "my clock", "command": "c"}]}},
     "`args.tools.mcp[0].name` must match pattern '^[A-Za-z0-9_-]{1,64}$', not 'my clock'."),
    ({"tools": {"allow": ["get time"]}},
     "Invalid `args.tools`: `allow` holds tool names (letters, digits, _ and -), not 'get time'."),
    ({"tools": {"call_timeout_s": -1}}, "`args.tools.call_timeout_s` must be greater than 0, not -1."),
    ({"tools": {"mcpp": []}}, "Unknown key `args.tools.mcpp` — did you mean `mcp`?"),
]


@pytest.mark.parametrize(("args", "sentence"), SENTENCES, ids=[str(i) for i in range(len(SENTENCES))])
def test_knowledge_and_tools_errors_are_one_sentence(args, sentence):
    with pytest.raises(ConfigError) as info:
        build_app(args)
    assert str(info.value) == sentence


def test_the_local_backend_streams_and_stops_on_the_tiny_qwen(tmp_path):
    from bizra_voice.knowledge.local import LocalModel
    from bizra_voice.serve.tiny_qwen import make_tiny_qwen

    model_dir = make_tiny_qwen(tmp_path / "tiny-qwen2")
    config = KnowledgeConfig(tiny_random=True, max_new_tokens=16)
    model = LocalModel(config, str(model_dir), "cpu")
    tools = [{"type": "function", "function": {"name": "get_time", "description": "the time",
                                                "parameters": {"type": "object", "properties": {}}}}]
    messages = [{"role": "user", "content": "What time is it?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "name": "get_time", "content": "12:00"}]

    async def scenario():
        whole = [i async for i in model.stream(messages, tools)]
        stream = model.stream(messages, [])
        first = await stream.__anext__()
        await stream.aclose()  # the caller went away (its finally sets the generation's stop flag)
        return whole, first

    whole, first = asyncio.run(scenario())
    assert whole and all(isinstance(i, str) for i in whole)  # random weights: text, no <tool_call>
    assert isinstance(first, str) and first
    assert json.dumps(whole)  # plain strings, as the deployment streams them through Ray
