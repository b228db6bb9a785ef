"""Client-side tools on /v1/realtime, without Ray: the session's functions and their choice, the answer
loop that pauses on a call of one and goes on with its output, the hybrid controller that tells the client
and resumes, and the function-call response events (validated against the openai package's own models).

The knowledge model here is a SCRIPTED stand-in (a function that returns which tool it calls), as a model
with random weights never calls a tool; the model path itself is tested end to end elsewhere."""

from __future__ import annotations

import asyncio
import json

import pytest

from bizra_voice.knowledge.answer_loop import answer_events
from bizra_voice.knowledge.tools.calls import ToolCall, ToolResult
from bizra_voice.knowledge.tools.client_tools import SessionToolset
from bizra_voice.realtime import RealtimeError, parse_client_event
from bizra_voice.realtime.function_calls import (
    MAX_OUTPUT_CHARS,
    FunctionOutput,
    PendingCalls,
    answer_options,
    parse_tool_choice,
    parse_tools,
)
from bizra_voice.realtime.session_state import RealtimeSettings, SessionState
from tests.test_hybrid_controller import make, pieces_of, settle, types, until
from tests.test_realtime_protocol import LOUD, SILENCE, ev, session


@pytest.fixture(scope="module")
def sp():
    import sentencepiece as spm

    from bizra_voice.constants import TOKENIZER_FILENAME
    from tests._tiny import tiny_checkpoint

    return spm.SentencePieceProcessor(model_file=str(tiny_checkpoint() / TOKENIZER_FILENAME))


WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


# ---- the session's functions -----------------------------------------------------------------------------
def test_session_update_declares_functions_and_their_choice():
    event = parse_client_event(ev(type="session.update", event_id="e1", session={
        "type": "realtime", "tools": [WEATHER, {"type": "function", "name": "hang_up"}],
        "tool_choice": {"type": "function", "name": "get_weather"}}))
    tools, choice = event.changes.tools, event.changes.tool_choice
    assert [t.name for t in tools] == ["get_weather", "hang_up"] and choice == {"type": "function",
                                                                                "name": "get_weather"}
    state = SessionState(RealtimeSettings(voice="NATM1"))
    state.commit(state.plan(event.changes))
    reported = state.session_object()
    assert reported["tools"][0] == WEATHER and reported["tool_choice"] == choice
    assert reported["tools"][1]["parameters"] == {"type": "object", "properties": {}}
    from openai.types.realtime import SessionUpdatedEvent

    parsed = SessionUpdatedEvent.model_validate(state.updated())
    assert parsed.session.tools[0].name == "get_weather"
    # the model is offered only the named function, and a gateway is told to call it
    options = answer_options(tools, choice)
    assert [t["function"]["name"] for t in options["client_tools"]] == ["get_weather"]
    assert options["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert answer_options(tools, "none") == {} and answer_options((), "auto") == {}
    assert answer_options(tools, "auto")["tool_choice"] is None


@pytest.mark.parametrize("tools, param, code", [
    ("nope", "session.tools", "invalid_value"),
    ([{"type": "mcp", "server_label": "x"}], "session.tools.0.type", "unsupported_tool"),
    ([{"type": "function", "name": "has space"}], "session.tools.0.name", "invalid_value"),
    ([WEATHER, WEATHER], "session.tools.1.name", "invalid_value"),
    ([{"type": "function", "name": "f", "parameters": "x"}], "session.tools.0.parameters", "invalid_value"),
    ([{"type": "function", "name": "f", "strict": True}], "session.tools.0.strict", "unknown_parameter"),
    ([{"type": "function", "name": f"f{i}"} for i in range(129)], "session.tools", "invalid_value"),
])
def test_bad_tools_are_refused_with_their_path(tools, param, code):
    with pytest.raises(RealtimeError) as err:
        parse_tools(tools, "e2")
    assert (err.value.param, err.value.code, err.value.event_id) == (param, code, "e2")


def test_a_choice_the_session_cannot_keep_is_refused_and_nothing_changes():
    for bad in ("sometimes", {"type": "function"}, {"type": "mcp", "server_label": "x"}):
        with pytest.raises(RealtimeError) as err:
            parse_tool_choice(bad, "e3")
        assert err.value.param == "session.tool_choice"
    state = SessionState(RealtimeSettings(voice="NATM1"), can_force_tools=False)
    update = parse_client_event(ev(type="session.update", event_id="e4", session={
        "tools": [WEATHER], "tool_choice": "required"}))
    with pytest.raises(RealtimeError) as err:  # the local model's chat template cannot force a call
        state.plan(update.changes)
    assert err.value.code == "unsupported_parameter" and "gateway" in err.value.message
    named_missing = parse_client_event(ev(type="session.update", session={
        "tools": [WEATHER], "tool_choice": {"type": "function", "name": "hang_up"}}))
    with pytest.raises(RealtimeError, match="not among the session's tools"):
        state.plan(named_missing.changes)
    assert state.settings.tools == () and state.settings.tool_choice == "auto"
    assert SessionState(RealtimeSettings(), can_force_tools=True).plan(update.changes).fields["tool_choice"] == \
        "required"


def test_function_outputs_are_checked_against_the_calls_asked():
    event = parse_client_event(ev(type="conversation.item.create", event_id="e5", item={
        "type": "function_call_output", "call_id": "call_1", "output": '{"temp_c": 21}'}))
    assert event.kind == "function_output" and event.function_output == FunctionOutput("call_1", '{"temp_c": 21}')
    for item, param, code in (({"type": "function_call_output", "output": "x"}, "item.call_id", "invalid_value"),
                              ({"type": "function_call_output", "call_id": "c", "output": 3}, "item.output",
                               "invalid_value"),
                              ({"type": "function_call_output", "call_id": "c", "output": "x" * (MAX_OUTPUT_CHARS + 1)},
                               "item.output", "output_too_large"),
                              ({"type": "function_call_output", "call_id": "c", "output": "x", "extra": 1},
                               "item.extra", "unknown_parameter")):
        with pytest.raises(RealtimeError) as err:
            parse_client_event(ev(type="conversation.item.create", event_id="e6", item=item))
        assert (err.value.param, err.value.code, err.value.event_id) == (param, code, "e6")
    calls = PendingCalls()
    with pytest.raises(RealtimeError, match="No function call 'call_1' awaits"):
        calls.answered(FunctionOutput("call_1", "x"), "e7")
    calls.asked([{"call_id": "call_1", "name": "get_weather"}, {"call_id": "call_2", "name": "get_time"}])
    calls.answered(FunctionOutput("call_1", "sunny"), "e8")
    with pytest.raises(RealtimeError, match="has an output already"):
        calls.answered(FunctionOutput("call_1", "again"), "e9")
    assert calls.take() == {"call_1": "sunny"} and not calls.awaiting  # call_2 went on without its output
    with pytest.raises(RealtimeError, match="went on without it") as err:
        calls.answered(FunctionOutput("call_2", "late"), "e10")
    assert err.value.code == "call_not_awaited"
    calls.asked([{"call_id": "call_3", "name": "get_weather"}])
    calls.dropped(["call_3"], "superseded by a new user turn")
    with pytest.raises(RealtimeError, match="superseded by a new user turn"):
        calls.answered(FunctionOutput("call_3", "late"), "e11")


# ---- the function-call response --------------------------------------------------------------------------
def test_a_function_call_response_has_the_ga_events_in_order():
    from openai.types.realtime import (
        ConversationItemAdded,
        ConversationItemDone,
        ResponseCreatedEvent,
        ResponseDoneEvent,
        ResponseFunctionCallArgumentsDeltaEvent,
        ResponseFunctionCallArgumentsDoneEvent,
        ResponseOutputItemAddedEvent,
        ResponseOutputItemDoneEvent,
    )

    _, proto = session(voice="NATF0")
    speech = proto.on_frame(LOUD, " a")  # the model was speaking: that response completes first
    calls = [{"call_id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris"}'},
             {"call_id": "call_b", "name": "get_time", "arguments": "{}"}]
    events = proto.function_calls(calls)
    kinds = types(events)
    assert kinds[:5] == ["response.output_audio.done", "response.output_audio_transcript.done",
                         "response.content_part.done", "response.output_item.done", "conversation.item.done"]
    assert kinds[5] == "response.done" and events[5]["response"]["id"] == speech[0]["response"]["id"]
    per_call = ["response.output_item.added", "conversation.item.added", "response.function_call_arguments.delta",
                "response.function_call_arguments.done", "response.output_item.done", "conversation.item.done"]
    assert kinds[6:] == ["response.created", *per_call, *per_call, "response.done"]
    models = {"response.created": ResponseCreatedEvent, "response.output_item.added": ResponseOutputItemAddedEvent,
              "conversation.item.added": ConversationItemAdded, "response.done": ResponseDoneEvent,
              "response.function_call_arguments.delta": ResponseFunctionCallArgumentsDeltaEvent,
              "response.function_call_arguments.done": ResponseFunctionCallArgumentsDoneEvent,
              "response.output_item.done": ResponseOutputItemDoneEvent, "conversation.item.done": ConversationItemDone}
    parsed = [models[e["type"]].model_validate(e) for e in events[6:]]
    response_id = parsed[0].response.id
    assert response_id != speech[0]["response"]["id"]
    args_done = [p for p in parsed if p.type == "response.function_call_arguments.done"]
    assert [(a.call_id, a.name, json.loads(a.arguments), a.output_index) for a in args_done] == [
        ("call_a", "get_weather", {"city": "Paris"}, 0), ("call_b", "get_time", {}, 1)]
    assert all(a.response_id == response_id for a in args_done)
    done = parsed[-1].response
    assert done.status == "completed" and [i.call_id for i in done.output] == ["call_a", "call_b"]
    assert [i.type for i in done.output] == ["function_call", "function_call"]
    # items chain: speech item -> call_a's -> call_b's
    added = [p for p in parsed if p.type == "conversation.item.added"]
    assert added[0].previous_item_id == speech[1]["item"]["id"] and added[1].previous_item_id == added[0].item.id
    # the model's next words open a new speech response
    assert proto.on_frame(SILENCE, "") == []
    again = proto.on_frame(LOUD, " b")
    assert again[0]["type"] == "response.created" and again[0]["response"]["id"] not in (response_id,)


# ---- the answer loop pauses on a client's function -----------------------------------------------------------
class _ServerTools:
    """The replica's tools (one: get_time), as the MCP toolbox presents them."""

    def __init__(self) -> None:
        self.called: list[str] = []

    def schemas(self):
        return [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]

    async def call(self, call: ToolCall) -> ToolResult:
        self.called.append(call.name)
        return ToolResult(True, "12:00", 1.0)


def test_the_answer_pauses_on_a_client_call_and_goes_on_with_its_output():
    offered: list[list[str]] = []

    async def scripted_model(messages, tools):
        offered.append([t["function"]["name"] for t in tools])
        if messages[-1]["role"] == "tool" and messages[-1]["name"] == "get_weather":
            yield f"It is {messages[-1]['content']}."
            return
        yield "Let me check. "
        yield ToolCall("call_t", "get_time", "{}")
        yield ToolCall("call_w", "get_weather", '{"city": "Paris"}')

    server = _ServerTools()
    toolset = SessionToolset(server, [{"type": "function", "function": {"name": "get_weather"}}])

    async def run(messages, max_calls=3):
        return [item async for item in answer_events(scripted_model, messages, toolset, max_calls=max_calls)]

    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "Weather in Paris?"}]
    first = asyncio.run(run(messages))
    assert first[0] == "Let me check. " and [i["type"] for i in first[1:]] == ["tool.call", "tool.result",
                                                                             "client_tool.calls"]
    assert server.called == ["get_time"]  # the server's call ran; the client's waits for the client
    paused = first[-1]
    assert paused["calls"] == [{"call_id": "call_w", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert offered[0] == ["get_time", "get_weather"]
    resumed = [*paused["messages"], {"role": "tool", "tool_call_id": "call_w", "name": "get_weather",
                                     "content": "sunny"}]
    second = asyncio.run(run(resumed, max_calls=2))
    assert second == ["It is sunny."]
    assert offered[1] == []  # the question's two calls count: with at most 2, the model must answer now


# ---- the hybrid controller tells the client and resumes ---------------------------------------------------
def test_the_controller_pauses_tells_the_client_and_speaks_the_resumed_answer(sp):
    asked: list[tuple] = []
    answer_text = "It is sunny in Paris."

    async def scenario():
        ctl, live, events, _ = make(sp)

        def answer(question, context, persona, **options):
            asked.append((question, options))

            async def stream():
                if "resume" not in options:
                    yield {"type": "client_tool.calls", "messages": [{"role": "user", "content": question}],
                           "calls": [{"call_id": "call_w", "name": "get_weather", "arguments": "{}"}]}
                    return
                for piece in pieces_of(answer_text):
                    yield piece
            return stream()

        ctl.answer = answer
        ctl.answer_options = lambda: {"client_tools": [{"type": "function", "function": {"name": "get_weather"}}]}
        await ctl.on_user_text(None, {"text": "Weather in Paris?"})
        await until(lambda: "tool.client_calls" in types(events))
        assert ctl.paused is not None and not any(e["type"] == "router.decision" and e.get("fallback")
                                                  for e in events)
        assert ctl.resume({"call_w": "sunny"}) is True and ctl.paused is None
        assert ctl.resume({"call_w": "sunny"}) is False  # nothing is paused any more
        said = []
        for _ in range(120):
            frame = live.tick(model_word=True)
            ctl.on_output(frame)
            if frame.guided:
                said.append(frame.text_token)
            await settle()
            if "guidance.ended" in types(events):
                break
        # a new user turn drops a paused answer, and says so
        await ctl.on_user_text(None, {"text": "And in Rome?"})
        await until(lambda: types(events).count("tool.client_calls") == 2)
        await ctl.on_user_text(None, {"text": "Never mind."})
        await until(lambda: "tool.client_calls.dropped" in types(events))
        await ctl.close()
        return events, said

    events, said = asyncio.run(scenario())
    calls = next(e for e in events if e["type"] == "tool.client_calls")
    assert calls["turn_id"] == 1 and calls["calls"][0]["call_id"] == "call_w"
    resumed = next(e for e in events if e["type"] == "knowledge.resumed")
    assert resumed == {"type": "knowledge.resumed", "turn_id": 2, "resumes": 1, "call_ids": ["call_w"]}
    assert asked[0][0] == "Weather in Paris?" and "resume" not in asked[0][1]
    question, options = asked[1]
    assert question is None and options["resume"][-1] == {"role": "tool", "tool_call_id": "call_w",
                                                          "name": "get_weather", "content": "sunny"}
    done = next(e for e in events if e["type"] == "knowledge.answer" and e["done"])
    assert done["turn_id"] == 2 and done["text"] == answer_text and said == done["tokens"]
    ended = next(e for e in events if e["type"] == "guidance.ended")
    assert ended["turn_id"] == 2 and ended["cancelled"] is False
    dropped = next(e for e in events if e["type"] == "tool.client_calls.dropped")
    assert dropped == {"type": "tool.client_calls.dropped", "turn_id": 3, "call_ids": ["call_w"],
                       "reason": "superseded by a new user turn"}
