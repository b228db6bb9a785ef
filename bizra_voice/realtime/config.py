"""The app config's ``realtime`` section: what ``/v1/realtime`` adds to the engine's settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bizra_voice.realtime.voices import DEFAULT_VOICE_TABLE
from bizra_voice.session_params import normalize_voice


class IceServer(BaseModel):
    """One STUN or TURN server (aiortc's ``RTCIceServer``)."""

    model_config = ConfigDict(extra="forbid")

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


class RealtimeConfig(BaseModel):
    """OpenAI Realtime clients: voice names, and how much bursty input may wait to be played."""

    model_config = ConfigDict(extra="forbid")

    voices: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_VOICE_TABLE),
        description="OpenAI voice name -> PersonaPlex voice (a preset or custom voice of the catalog). "
        "Defaults: alloy NATF0, coral NATF1, marin NATF2, sage NATF3, shimmer VARF0, ash NATM0, cedar NATM1, "
        "ballad NATM2, echo NATM3, verse VARM0. A name missing here must be a catalog voice itself.")
    max_buffered_audio_s: float = Field(
        30.0, gt=0.0, le=600.0, description="Input audio that may wait to be played into the engine (bursts, "
        "audio sent while the session opens); an append past this gets an error and its excess is refused.")

    ice_servers: list[IceServer] = Field(
        default_factory=list, description="STUN/TURN servers for WebRTC calls (POST /v1/realtime/calls) whose "
        "clients are behind NAT: [{urls: 'stun:stun.example.org:3478'}, {urls: 'turn:...', username, credential}]. "
        "Empty: host candidates only (the replica's own addresses), enough on a LAN.")

    @field_validator("voices")
    @classmethod
    def _voice_names(cls, table: dict[str, str]) -> dict[str, str]:
        return {name.strip().lower(): normalize_voice(voice) for name, voice in table.items()}
