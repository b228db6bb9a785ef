"""Stateless server events: the input buffer, user speech and its transcription, and our extensions.

Events without a Realtime equivalent (hybrid mode's router decisions, Qwen's answer, guidance start/end,
a replica's drain notice, input dropped to catch up) go out with a ``bizra.`` prefix, so Realtime clients
can ignore them and ours can show them.
"""

from __future__ import annotations

from typing import Any

from bizra_voice.realtime.errors import new_id


def cleared() -> dict[str, Any]:
    return {"type": "input_audio_buffer.cleared", "event_id": new_id("event")}


def speech_started(item_id: str, audio_start_ms: int) -> dict[str, Any]:
    return {"type": "input_audio_buffer.speech_started", "event_id": new_id("event"), "item_id": item_id,
            "audio_start_ms": int(audio_start_ms)}


def speech_stopped(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {"type": "input_audio_buffer.speech_stopped", "event_id": new_id("event"), "item_id": item_id,
            "audio_end_ms": int(audio_end_ms)}


def transcription_completed(item_id: str, transcript: str, seconds: float) -> dict[str, Any]:
    return {"type": "conversation.item.input_audio_transcription.completed", "event_id": new_id("event"),
            "item_id": item_id, "content_index": 0, "transcript": transcript,
            "usage": {"type": "duration", "seconds": round(float(seconds), 3)}}


def transcription_failed(item_id: str, message: str) -> dict[str, Any]:
    return {"type": "conversation.item.input_audio_transcription.failed", "event_id": new_id("event"),
            "item_id": item_id, "content_index": 0,
            "error": {"type": "transcription_error", "code": "transcription_failed", "message": message}}


def extension(event: dict[str, Any]) -> dict[str, Any]:
    """One of our own events, namespaced for Realtime clients (``bizra.<type>``)."""
    return {**event, "type": f"bizra.{event['type']}", "event_id": new_id("event")}
