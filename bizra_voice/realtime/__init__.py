"""OpenAI Realtime (GA) protocol for ``/v1/realtime``, pure: no Ray, no sockets, no engine.

Read in this order: ``client_events`` (what clients send, checked), ``session_state`` (what
``session.update`` may change, and the lock once audio flows), ``live_change`` (a persona or voice
change of a running session), ``voices`` (OpenAI voice names -> presets),
``response_create`` (what ``response.create`` may ask of a full-duplex model), ``segmenter`` and
``responses`` (how responses are cut from a model that never stops listening or speaking),
``conversation`` (items in order), ``server_events`` and ``audio_formats``. ``config`` is the app config's
``realtime`` section. One connection is served by ``bizra_voice/serve/realtime_session.py`` (the socket)
and ``bizra_voice/serve/realtime_engine.py`` (the engine side).
"""

from bizra_voice.realtime.audio_formats import AudioCodec, decode_pcm16, encode_pcm16
from bizra_voice.realtime.client_events import ClientEvent, SessionChanges, parse_client_event
from bizra_voice.realtime.conversation import Conversation
from bizra_voice.realtime.errors import RealtimeError, error_event, new_id
from bizra_voice.realtime.live_change import LiveChange
from bizra_voice.realtime.responses import ResponseStream
from bizra_voice.realtime.segmenter import ResponseSegmenter, SegmenterConfig
from bizra_voice.realtime.session_state import RealtimeSettings, SessionState, SettingsUpdate

__all__ = [
    "AudioCodec", "ClientEvent", "Conversation", "LiveChange", "RealtimeError", "RealtimeSettings",
    "ResponseSegmenter", "ResponseStream", "SegmenterConfig", "SessionChanges", "SessionState", "SettingsUpdate",
    "decode_pcm16", "encode_pcm16", "error_event", "new_id", "parse_client_event",
]
