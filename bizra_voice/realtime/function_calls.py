"""Client-side tools on ``/v1/realtime``, the GA way (pure): the functions a client declares, the calls it
is asked to run, and the outputs it sends back.

PersonaPlex itself calls no tools: in hybrid mode the knowledge model (Qwen, or the configured gateway)
answers a user turn, and it is offered the client's functions beside the server's MCP tools. Its call of
one comes to the client as a response of ``function_call`` items (``responses.py``); the client runs it,
adds a ``function_call_output`` item (``conversation.item.create``) and sends ``response.create``: the
knowledge model goes on from its call with that output, and PersonaPlex speaks the answer.

- ``session.update`` ``tools``: ``{"type": "function", "name", "description", "parameters"}`` (at most
  ``MAX_TOOLS``); other tool types are refused with their path (``session.tools.<i>.type``): the server's
  own MCP tools are the operator's (``tools.mcp`` in the app config).
- ``tool_choice``: ``auto`` (default), ``none``, ``required`` (a gateway enforces it; the local backend's
  chat template cannot, so there it is refused), or ``{"type": "function", "name"}`` (only that function
  is offered, and a gateway is told to call it).
- An output names a call the client was asked to run and has not answered yet; an output for a call that
  a newer user turn superseded is refused with the reason (the answer it would have finished was dropped).
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass
from typing import Any

from bizra_voice.realtime.errors import RealtimeError

MAX_TOOLS = 128
MAX_DESCRIPTION_CHARS = 1024
MAX_PARAMETERS_BYTES = 16 * 1024
MAX_OUTPUT_CHARS = 16_000  # of one function output: what the knowledge model's context can take
MAX_REMEMBERED_CALLS = 256  # answered or dropped calls remembered, to tell a late output why
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CHOICES = ("auto", "none", "required")


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None

    def session_object(self) -> dict[str, Any]:
        """As ``session.created`` / ``session.updated`` report it (GA ``RealtimeFunctionTool``)."""
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": self.parameters or {"type": "object", "properties": {}}}

    def chat_schema(self) -> dict[str, Any]:
        """As the knowledge model is offered it (Chat Completions ``tools``)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters or {"type": "object",
                                                                                   "properties": {}}}}


def _bad(message: str, param: str, event_id: str | None, code: str = "invalid_value") -> RealtimeError:
    return RealtimeError(message, code, param=param, event_id=event_id)


def parse_tools(raw: Any, event_id: str | None) -> tuple[FunctionTool, ...]:
    """``session.tools`` -> the client's functions; RealtimeError names the first bad one."""
    if not isinstance(raw, list):
        raise _bad("`tools` must be a list of tools.", "session.tools", event_id)
    if len(raw) > MAX_TOOLS:
        raise _bad(f"At most {MAX_TOOLS} tools may be declared ({len(raw)} were).", "session.tools", event_id)
    tools: dict[str, FunctionTool] = {}
    for index, tool in enumerate(raw):
        where = f"session.tools.{index}"
        if not isinstance(tool, dict):
            raise _bad("Each tool must be an object.", where, event_id)
        if tool.get("type", "function") != "function":
            raise _bad(f"Only function tools are served here ({tool.get('type')!r} is not): the client runs them. "
                       "The server's own MCP tools are configured by its operator (tools.mcp).",
                       f"{where}.type", event_id, "unsupported_tool")
        unknown = sorted(set(tool) - {"type", "name", "description", "parameters"})
        if unknown:
            raise _bad(f"Unknown parameter: '{where}.{unknown[0]}'.", f"{where}.{unknown[0]}", event_id,
                       "unknown_parameter")
        name = tool.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise _bad("A function's `name` must be 1-64 letters, digits, '_' or '-'.", f"{where}.name", event_id)
        if name in tools:
            raise _bad(f"Two tools are named {name!r}.", f"{where}.name", event_id)
        description = tool.get("description") or ""
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
            raise _bad(f"`description` must be text of at most {MAX_DESCRIPTION_CHARS} characters.",
                       f"{where}.description", event_id)
        parameters = tool.get("parameters")
        if parameters is not None and (not isinstance(parameters, dict)
                                       or len(json.dumps(parameters)) > MAX_PARAMETERS_BYTES):
            raise _bad(f"`parameters` must be a JSON Schema object of at most {MAX_PARAMETERS_BYTES} bytes.",
                       f"{where}.parameters", event_id)
        tools[name] = FunctionTool(name, description, parameters)
    return tuple(tools.values())


def parse_tool_choice(raw: Any, event_id: str | None) -> str | dict[str, str]:
    """``session.tool_choice`` -> ``auto``/``none``/``required`` or ``{"type": "function", "name"}``."""
    if raw in CHOICES:
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("name"), str) \
            and NAME.match(raw["name"]) and set(raw) <= {"type", "name"}:
        return {"type": "function", "name": raw["name"]}
    if isinstance(raw, dict) and raw.get("type") == "mcp":
        raise _bad("tool_choice cannot name an MCP tool here: the server's MCP tools are the operator's.",
                   "session.tool_choice", event_id, "unsupported_tool")
    raise _bad("`tool_choice` must be 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}.",
               "session.tool_choice", event_id)


def check_choice(tools: tuple[FunctionTool, ...], choice: str | dict[str, str], *, can_force: bool,
                 event_id: str | None) -> None:
    """The choice must be one the session can keep: a named function it declares, ``required`` only where
    the knowledge backend can force a call."""
    if isinstance(choice, dict) and choice["name"] not in {tool.name for tool in tools}:
        raise _bad(f"tool_choice names {choice['name']!r}, which is not among the session's tools.",
                   "session.tool_choice", event_id)
    if choice == "required" and not can_force:
        raise _bad("tool_choice 'required' needs a knowledge backend that can force a call (an OpenAI-compatible "
                   "gateway, knowledge.backend: openai); the local model's chat template cannot. Use 'auto' or "
                   "name the function.", "session.tool_choice", event_id, "unsupported_parameter")


def answer_options(tools: tuple[FunctionTool, ...], choice: str | dict[str, str]) -> dict[str, Any]:
    """What a knowledge answer is given of the client's tools (nothing when there are none or 'none')."""
    if not tools or choice == "none":
        return {}
    if isinstance(choice, dict):
        named = [tool for tool in tools if tool.name == choice["name"]]
        return {"client_tools": [tool.chat_schema() for tool in named],
                "tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    return {"client_tools": [tool.chat_schema() for tool in tools],
            "tool_choice": "required" if choice == "required" else None}


@dataclass(frozen=True)
class FunctionOutput:
    """A ``function_call_output`` item the client added."""

    call_id: str
    output: str
    item_id: str | None = None

    def item(self, item_id: str) -> dict[str, Any]:
        return {"id": item_id, "object": "realtime.item", "type": "function_call_output", "status": "completed",
                "call_id": self.call_id, "output": self.output}


def parse_function_output(item: dict[str, Any], event_id: str | None, max_id_chars: int) -> FunctionOutput:
    """A ``conversation.item.create`` item of type ``function_call_output``."""
    unknown = sorted(set(item) - {"type", "id", "object", "status", "call_id", "output"})
    if unknown:
        raise _bad(f"Unknown parameter: 'item.{unknown[0]}'.", f"item.{unknown[0]}", event_id, "unknown_parameter")
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not 0 < len(call_id) <= max_id_chars:
        raise _bad("A function_call_output needs the `call_id` of the call it answers.", "item.call_id", event_id)
    output = item.get("output")
    if not isinstance(output, str):
        raise _bad("`output` must be a string (JSON text, for instance).", "item.output", event_id)
    if len(output) > MAX_OUTPUT_CHARS:
        raise _bad(f"`output` is {len(output)} characters; at most {MAX_OUTPUT_CHARS} fit the knowledge model's "
                   "context. Send a shorter result.", "item.output", event_id, "output_too_large")
    item_id = item.get("id")
    if item_id is not None and (not isinstance(item_id, str) or not 0 < len(item_id) <= max_id_chars):
        raise _bad(f"item.id must be a string of at most {max_id_chars} characters.", "item.id", event_id)
    return FunctionOutput(call_id, output, item_id)


class PendingCalls:
    """The calls this session's client was asked to run, the outputs it sent, and the calls no longer awaited."""

    def __init__(self) -> None:
        self.awaiting: dict[str, str] = {}  # call_id -> function name, asked and not yet answered
        self.outputs: dict[str, str] = {}  # call_id -> output, answered and not yet resumed
        self._gone: collections.OrderedDict[str, str] = collections.OrderedDict()  # call_id -> why

    def asked(self, calls: list[dict[str, Any]]) -> None:
        for call in calls:
            self.awaiting[call["call_id"]] = call["name"]

    def answered(self, output: FunctionOutput, event_id: str | None) -> None:
        """Record the client's output; RealtimeError when no call awaits it (naming why)."""
        call_id = output.call_id
        if call_id in self.outputs:
            raise _bad(f"The call {call_id!r} has an output already.", "item.call_id", event_id)
        if call_id not in self.awaiting:
            why = self._gone.get(call_id)
            raise _bad(f"No function call {call_id!r} awaits an output" + (f": {why}." if why else "."),
                       "item.call_id", event_id, "call_not_awaited" if why else "invalid_value")
        del self.awaiting[call_id]
        self.outputs[call_id] = output.output

    def take(self) -> dict[str, str]:
        """The outputs sent so far, handed to the answer that resumes (the calls are then done)."""
        outputs, self.outputs = self.outputs, {}
        for call_id in outputs:
            self._forget(call_id, "its output was already used")
        for call_id in list(self.awaiting):  # the answer goes on without them (the model is told)
            del self.awaiting[call_id]
            self._forget(call_id, "the answer went on without it (response.create came before its output)")
        return outputs

    def dropped(self, call_ids: list[str], reason: str) -> None:
        for call_id in call_ids:
            self.awaiting.pop(call_id, None)
            self.outputs.pop(call_id, None)
            self._forget(call_id, f"its answer was dropped ({reason})")

    def _forget(self, call_id: str, why: str) -> None:
        self._gone[call_id] = why
        while len(self._gone) > MAX_REMEMBERED_CALLS:
            self._gone.popitem(last=False)
