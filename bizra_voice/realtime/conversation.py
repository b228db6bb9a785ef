"""The conversation as Realtime SDKs track it: items in order, each naming the one before it.

Assistant message items come from responses (``responses.py``); user items from committed audio turns and
typed messages. Each ``conversation.item.added`` carries ``previous_item_id`` so a client can mirror the
list. The audio sent for recent assistant items is counted so that ``conversation.item.truncate`` (the
client stopped playing an item) can be checked against it and acknowledged.
"""

from __future__ import annotations

from typing import Any

from bizra_voice.realtime.errors import RealtimeError, new_id

MAX_TRACKED_ITEMS = 64  # assistant items whose audio length is kept (conversation.item.truncate)


class Conversation:
    def __init__(self) -> None:
        self.last_item_id: str | None = None
        self.audio_ms: dict[str, int] = {}  # assistant item -> ms of audio sent (the last MAX_TRACKED_ITEMS)

    def append(self, item_id: str) -> str | None:
        """``item_id`` joins the end of the conversation; returns the item before it."""
        previous, self.last_item_id = self.last_item_id, item_id
        return previous

    def audio_sent(self, item_id: str, ms: int) -> None:
        self.audio_ms[item_id] = self.audio_ms.get(item_id, 0) + ms
        while len(self.audio_ms) > MAX_TRACKED_ITEMS:
            del self.audio_ms[next(iter(self.audio_ms))]

    def committed(self, item_id: str) -> list[dict[str, Any]]:
        """``input_audio_buffer.committed`` and the user audio item it adds to the conversation."""
        previous = self.append(item_id)
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}]}
        return [{"type": "input_audio_buffer.committed", "event_id": new_id("event"), "item_id": item_id,
                 "previous_item_id": previous},
                *_item_added_and_done(item, previous)]

    def user_text_item(self, item_id: str, text: str) -> list[dict[str, Any]]:
        """``conversation.item.added`` + ``conversation.item.done`` for a typed user message."""
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
                "status": "completed", "content": [{"type": "input_text", "text": text}]}
        return _item_added_and_done(item, self.append(item_id))

    def added(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """``conversation.item.added`` + ``.done`` for an item the client created (a function's output)."""
        return _item_added_and_done(item, self.append(item["id"]))

    def truncated(self, item_id: str, audio_end_ms: int, event_id: str | None = None) -> dict[str, Any]:
        """Acknowledge ``conversation.item.truncate`` of an assistant item (the client stopped playing it)."""
        sent = self.audio_ms.get(item_id)
        if sent is None:
            raise RealtimeError(f"No assistant audio item {item_id!r} in this conversation (recent ones only).",
                                "item_not_found", param="item_id", event_id=event_id)
        if audio_end_ms > sent:
            raise RealtimeError(f"audio_end_ms {audio_end_ms} is past the {sent} ms of audio sent for {item_id}.",
                                "invalid_value", param="audio_end_ms", event_id=event_id)
        return {"type": "conversation.item.truncated", "event_id": new_id("event"), "item_id": item_id,
                "content_index": 0, "audio_end_ms": int(audio_end_ms)}


def _item_added_and_done(item: dict[str, Any], previous: str | None) -> list[dict[str, Any]]:
    return [{"type": f"conversation.item.{phase}", "event_id": new_id("event"), "previous_item_id": previous,
             "item": item} for phase in ("added", "done")]
