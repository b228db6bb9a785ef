"""The model's output frames -> GA response events, in the order SDKs expect.

A response (opened by the segmenter on speech, or at once by ``response.create``) sends
``response.created``, the assistant item's ``response.output_item.added`` + ``conversation.item.added``
and ``response.content_part.added``; then every 80 ms frame is a ``response.output_audio.delta`` (its text
piece a ``response.output_audio_transcript.delta``); closing sends the matching ``.done`` events and
``response.done`` with status ``completed``, ``cancelled`` (``response.cancel``, a barge-in), or
``failed`` (the server ended the session). Frames outside a response are the model's silence; they are
not sent. ``response.create`` while a response is open closes that one (``completed``: the model's speech
goes on in the new one) - in a full-duplex model the client chooses where a response begins, not whether
the model speaks. The request's ``metadata`` comes back on ``response.created`` and ``response.done``.

When hybrid mode's knowledge model calls the client's functions (``function_calls.py``), ``function_calls``
sends a response of its own: one ``function_call`` item per call (``response.output_item.added``,
``conversation.item.added``, ``response.function_call_arguments.delta`` and ``.done``,
``response.output_item.done``, ``conversation.item.done``) and ``response.done`` listing them. A speech
response still open is completed first, and the model's next words open a new one.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from bizra_voice import constants as C
from bizra_voice.realtime.audio_formats import format_object
from bizra_voice.realtime.conversation import Conversation
from bizra_voice.realtime.errors import new_id
from bizra_voice.realtime.response_create import ResponseRequest
from bizra_voice.realtime.segmenter import ResponseSegmenter, SegmenterConfig
from bizra_voice.realtime.session_state import SessionState


class ResponseStream:
    def __init__(self, state: SessionState, conversation: Conversation,
                 segmenter: SegmenterConfig | None = None, audio_events: bool = True) -> None:
        """``audio_events=False``: the audio goes on a WebRTC track, so no ``output_audio.delta`` is sent."""
        self.state = state
        self.audio_events = audio_events
        self.conversation = conversation
        self.segmenter = ResponseSegmenter(segmenter or SegmenterConfig())
        self.response_id: str | None = None  # the open response, if any
        self.item_id: str | None = None
        self.metadata: dict[str, str] | None = None
        self.transcript: list[str] = []
        self.frames = 0
        self.responses = 0
        self._previous: str | None = None  # the item before the open response's assistant item

    def on_frame(self, pcm: np.ndarray, text: str) -> list[dict[str, Any]]:
        """The server events for one 80 ms engine frame (none while the model is silent)."""
        codec = self.state.start()  # frames flow: the session's settings are fixed
        self.frames += 1
        step = self.segmenter.step(text, pcm)
        streamed = self.audio_events and codec.streams_output  # a stateful codec hears every frame
        audio = codec.encode(pcm) if streamed else None  # else encoded only when sent
        if not step.in_response:
            return []
        events = self._open(None) if step.started else []
        if self.audio_events:
            events.append(self._part("response.output_audio.delta",
                                     delta=codec.encode(pcm) if audio is None else audio))
        self.conversation.audio_sent(self.item_id, int(C.FRAME_MS))  # type: ignore[arg-type]
        if text:
            self.transcript.append(text)
            events.append(self._part("response.output_audio_transcript.delta", delta=text))
        if step.ended:
            events.extend(self._close("completed"))
        return events

    def request(self, request: ResponseRequest) -> list[dict[str, Any]]:
        """``response.create``: a response opens now, carrying the request's metadata."""
        events = self._close("completed") if self.response_id is not None else []
        self.segmenter.open_now()
        return events + self._open(request.metadata)

    def cancel(self, reason: str = "client_cancelled") -> list[dict[str, Any]]:
        """Close the open response as ``cancelled`` (response.cancel, a barge-in, the client leaving)."""
        if not self.segmenter.cancel() or self.response_id is None:
            return []
        return self._close("cancelled", reason=reason)

    def function_calls(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The knowledge model called the client's functions (``{"call_id", "name", "arguments"}`` each)."""
        events = self._close("completed") if self.response_id is not None else []
        self.segmenter.cancel()
        self.response_id, self.item_id, self.metadata = new_id("resp"), None, None
        self.responses += 1
        events.append({"type": "response.created", "event_id": new_id("event"),
                       "response": self._response("in_progress")})
        done_items = []
        for index, call in enumerate(calls):
            item_id = new_id("item")
            previous = self.conversation.append(item_id)
            item = {"id": item_id, "object": "realtime.item", "type": "function_call", "status": "in_progress",
                    "call_id": call["call_id"], "name": call["name"], "arguments": ""}
            done = {**item, "status": "completed", "arguments": call["arguments"]}
            named = {"response_id": self.response_id, "item_id": item_id, "output_index": index,
                     "call_id": call["call_id"]}
            events += [*self._item_events("added", item, index, previous),
                       {"type": "response.function_call_arguments.delta", "event_id": new_id("event"), **named,
                        "delta": call["arguments"]},
                       {"type": "response.function_call_arguments.done", "event_id": new_id("event"), **named,
                        "name": call["name"], "arguments": call["arguments"]},
                       *self._item_events("done", done, index, previous)]
            done_items.append(done)
        events.append({"type": "response.done", "event_id": new_id("event"),
                       "response": {**self._response("completed"), "output": done_items}})
        self.response_id = None
        return events

    def fail(self, code: str, message: str) -> list[dict[str, Any]]:
        """Close the open response as ``failed``: the server is ending the session."""
        if not self.segmenter.cancel() or self.response_id is None:
            return []
        return self._close("failed", error={"type": "server_error", "code": code, "message": message})

    # ---- event builders ---------------------------------------------------------------------------------
    def _response(self, status: str, *, reason: str | None = None, error: dict[str, str] | None = None,
                  with_output: bool = False) -> dict[str, Any]:
        s = self.state.settings
        details = None if status == "in_progress" else {"type": status, "reason": reason, "error": error}
        body: dict[str, Any] = {
            "object": "realtime.response", "id": self.response_id, "status": status, "status_details": details,
            "conversation_id": self.state.conversation_id, "output_modalities": ["audio"],
            "audio": {"output": {"format": format_object(s.output_format), "voice": s.voice}},
            "max_output_tokens": "inf", "metadata": self.metadata, "usage": None, "output": [],
        }
        if with_output:
            body["output"] = [self._assistant_item("completed" if status == "completed" else "incomplete")]
        return body

    def _part(self, event_type: str, **extra: Any) -> dict[str, Any]:
        return {"type": event_type, "event_id": new_id("event"), "response_id": self.response_id,
                "item_id": self.item_id, "output_index": 0, "content_index": 0, **extra}

    def _assistant_item(self, status: str) -> dict[str, Any]:
        content = [] if status == "in_progress" else [{"type": "output_audio", "transcript": "".join(self.transcript)}]
        return {"id": self.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": status, "content": content}

    def _item_events(self, phase: Literal["added", "done"], item: dict[str, Any], output_index: int,
                     previous: str | None) -> list[dict[str, Any]]:
        """``response.output_item.*`` + ``conversation.item.*``: SDKs track the conversation through them."""
        return [{"type": f"response.output_item.{phase}", "event_id": new_id("event"),
                 "response_id": self.response_id, "output_index": output_index, "item": item},
                {"type": f"conversation.item.{phase}", "event_id": new_id("event"),
                 "previous_item_id": previous, "item": item}]

    def _open(self, metadata: dict[str, str] | None) -> list[dict[str, Any]]:
        self.response_id, self.item_id, self.transcript, self.metadata = new_id("resp"), new_id("item"), [], metadata
        self.responses += 1
        self._previous = self.conversation.append(self.item_id)
        return [{"type": "response.created", "event_id": new_id("event"), "response": self._response("in_progress")},
                *self._item_events("added", self._assistant_item("in_progress"), 0, self._previous),
                self._part("response.content_part.added", part={"type": "audio", "transcript": ""})]

    def _close(self, status: str, *, reason: str | None = None,
               error: dict[str, str] | None = None) -> list[dict[str, Any]]:
        transcript = "".join(self.transcript)
        item = self._assistant_item("completed" if status == "completed" else "incomplete")
        events = [self._part("response.output_audio.done"),
                  self._part("response.output_audio_transcript.done", transcript=transcript),
                  self._part("response.content_part.done", part={"type": "audio", "transcript": transcript}),
                  *self._item_events("done", item, 0, self._previous),
                  {"type": "response.done", "event_id": new_id("event"),
                   "response": self._response(status, reason=reason, error=error, with_output=True)}]
        self.response_id = self.item_id = self.metadata = None
        return events
