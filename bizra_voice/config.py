"""The application config: ONE pydantic model, the ``args:`` of ``serve_config*.yaml``.

``bizra_voice.app:build_app`` validates it and turns it into Ray Serve deployment options, so the YAML
holds the product's settings (slots, models, fractions) and the deployment sizing follows from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from bizra_voice.engine.config import EngineConfig
from bizra_voice.knowledge.config import KnowledgeConfig, QwenConfig, ToolsConfig
from bizra_voice.realtime.config import RealtimeConfig
from bizra_voice.serve.autoscaling import POLICY_PATH as AUTOSCALING_POLICY

Profile = Literal["gpu", "cpu-dev"]

CPU_DEV_WARNING = (
    "CPU dev profile: tiny RANDOM checkpoints - the assistant's audio is noise and its text is gibberish; "
    "this profile checks the plumbing and the client, not the model."
)


def default_cache_dir() -> str:
    return os.environ.get("BIZRA_VOICE_CACHE", str(Path.home() / ".cache" / "bizra-voice"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VoiceServerConfig(_Strict):
    """Sizing of the ingress + engine deployment: one replica = one GPU share = ``engine.slots`` sessions."""

    num_gpus: float = Field(0.0, ge=0.0, le=8.0, description="GPU share per replica (fractional).")
    num_cpus: float = Field(1.0, ge=0.0)
    min_replicas: int = Field(1, ge=0)
    initial_replicas: int | None = Field(None, ge=0)
    max_replicas: int = Field(1, ge=1, description="Upper bound; replicas beyond the cluster's GPUs stay "
                              "pending until a GPU node joins.")
    target_session_fraction: float = Field(0.7, gt=0.0, le=1.0, description="Autoscale when sessions per "
                                           "replica exceed this fraction of the slots.")
    upscale_delay_s: float = Field(5.0, ge=0.0, description="Autoscaling: how long load must stay above the "
                                   "target before a replica is added.")
    downscale_delay_s: float = Field(300.0, ge=0.0, description="Autoscaling: how long load must stay below "
                                     "the target before a replica is stopped; its sessions are drained first.")
    warm_every_gpu: bool = Field(False, description="Keep one replica per GPU share of the cluster's alive "
                                 "nodes running whatever the load (a GPU node joins -> a replica follows); "
                                 "load can still add more, up to max_replicas. Needs num_gpus > 0 and "
                                 "max_replicas > min_replicas.")
    reject_margin: int = Field(2, ge=1, le=32, description="Requests a full replica still accepts so that "
                               "it can tell the client 'at capacity' (1013) instead of leaving it queued.")
    stats_interval_s: float = Field(2.0, gt=0.0, description="Period of session.stats events.")
    client_dir: str | None = Field(None, description="Folder served at / (default: the repo's client/).")
    debug_record_dir: str | None = Field(None, description="TEST HOOK: write each session's decoded input "
                                         "PCM and output text tokens to <dir>/<session_id>.npz on close.")

    @model_validator(mode="after")
    def _warm_needs_gpu_shares(self) -> VoiceServerConfig:
        if self.warm_every_gpu and (self.num_gpus <= 0 or self.max_replicas <= self.min_replicas):
            raise ValueError("warm_every_gpu keeps one replica per GPU share: set num_gpus above 0 and "
                             "max_replicas above min_replicas (the most GPU shares the cluster may hold)")
        return self

    def max_ongoing_requests(self, slots: int) -> int:
        """``slots``: the engine's slot count, or its upper bound when it is measured at start ('auto')."""
        return slots + self.reject_margin

    def autoscaling_config(self, slots: int) -> dict | None:
        if self.max_replicas <= self.min_replicas:
            return None
        return {
            "min_replicas": self.min_replicas,
            "initial_replicas": self.initial_replicas if self.initial_replicas is not None else self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": max(1.0, round(self.target_session_fraction * slots, 2)),
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            # the replicas' measured capacity, not a deploy-time number, sets the target (serve/autoscaling.py)
            "policy": {"policy_function": AUTOSCALING_POLICY},
        }


class TranscriberConfig(_Strict):
    """Speech-to-text of user turns (hybrid and auto sessions): a stateless Whisper deployment."""

    enabled: bool = True
    model: str = Field("openai/whisper-small", description="HF repo id or local folder of a Whisper checkpoint.")
    tiny_random: bool = Field(False, description="Generate a tiny random Whisper + local tokenizer (CPU dev).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    language: str | None = Field("en", description="Whisper language code; None = detect (multilingual models).")
    max_new_tokens: int = Field(96, ge=1, le=440)
    num_gpus: float = Field(0.0, ge=0.0, le=8.0)
    num_cpus: float = Field(0.0, ge=0.0)
    num_replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(8, ge=1)
    gpu_memory_fraction: float | None = Field(None, gt=0.0, le=1.0)


class HybridConfig(_Strict):
    """Per-session hybrid controller: user-turn detection, barge-in, memory, timeouts."""

    vad_min_db: float = Field(-45.0, le=0.0, description="Absolute speech threshold (frame RMS, dBFS).")
    vad_hangover_ms: float = Field(560.0, gt=0.0, description="Silence that ends a user turn.")
    vad_early_end_ms: float = Field(240.0, gt=0.0, description="Silence that ends it once PersonaPlex speaks.")
    barge_in: bool = Field(True, description="User speech cancels the rest of a guided answer.")
    memory_turns: int = Field(16, ge=2, le=200)
    context_turns: int = Field(6, ge=0, le=100, description="Recent turns given to Qwen as context.")
    transcribe_timeout_s: float = Field(10.0, gt=0.0)
    route_timeout_s: float = Field(2.0, gt=0.0)
    answer_timeout_s: float = Field(30.0, gt=0.0, description="Longest a whole Qwen answer may stream.")


class RouterConfig(_Strict):
    allow_hybrid: bool = True
    max_load: float = Field(1.0, gt=0.0)
    deadline_ms: float = Field(1500.0, gt=0.0)
    status_timeout_s: float = Field(1.0, gt=0.0, description="Time the router waits for Qwen's status.")
    num_cpus: float = Field(0.0, ge=0.0)


class AccessConfig(_Strict):
    """Who may use the endpoints (see bizra_voice/security.py). The bind address is Serve's
    ``http_options.host`` (127.0.0.1 in both shipped profiles: loopback only)."""

    token: str | None = Field(None, max_length=512, description="Shared access token for /api/* (query "
                              "`token`, subprotocol `bizra-token.<token>` or Bearer); prefer token_env.")
    token_env: str | None = Field("BIZRA_VOICE_TOKEN", description="Environment variable holding the token "
                                  "(read in the replica); unset/empty = no token required.")
    allowed_origins: list[str] = Field(default_factory=list, description="Extra browser origins allowed, e.g. "
                                       "https://voice.lan:8000; '*' = any. Same origin and localhost always.")
    allow_localhost_origins: bool = True


class ReliabilityConfig(_Strict):
    """Back-pressure and drain (see bizra_voice/serve/backpressure.py and VoiceServer's drain)."""

    outbound_max_frames: int = Field(25, ge=1, le=1000, description="Output frames that may wait for a slow "
                                     "client before the oldest frame's audio is dropped.")
    outbound_close_after_dropped: int = Field(125, ge=1, description="Dropped frames after which the session "
                                              "is closed with 4408.")
    drain_notice_s: float = Field(2.0, ge=0.0, le=15.0, description="On replica stop/downscale: time between "
                                  "the session.draining event and the 1001 close.")


class SessionsConfig(_Strict):
    """``POST /api/sessions``: session requests stored as single-use tickets in the ``SessionTickets``
    deployment (bizra_voice/session_tickets.py), so a WebSocket URL needs only ``?session=<id>``."""

    ticket_ttl_s: float = Field(60.0, ge=5.0, le=3600.0, description="How long a ticket may wait for its "
                                "WebSocket; it opens one session.")
    max_pending: int = Field(1000, ge=1, le=100_000, description="Unused tickets kept at once; more get 429.")
    max_body_kb: float = Field(64.0, ge=4.0, le=1024.0, description="Largest request body (KiB; 413 past it). "
                               "A 4000-character persona is at most ~48 KiB of JSON.")
    num_cpus: float = Field(0.0, ge=0.0, description="CPU reserved for the SessionTickets replica.")


class RecordingConfig(_Strict):
    """Consent-gated recording (bizra_voice/recording.py): only sessions opened with ``record=1`` are stored,
    and only while ``enabled``; nothing is written otherwise."""

    enabled: bool = Field(False, description="Operator switch; off = no session is ever recorded.")
    dir: str | None = Field(None, description="Where session folders go (default <cache_dir>/recordings).")
    retention_days: float = Field(30.0, ge=0.0, description="Folders older than this are deleted (0 = keep).")


class VoicesConfig(_Strict):
    """Voices of one's own (bizra_voice/voice_upload.py): ``POST /api/voices`` / ``DELETE /api/voices/<name>``.
    Off by default: then the routes answer 403 and nothing is read from or written to the uploads folder."""

    uploads: bool = Field(False, description="Operator switch: let clients holding the access token upload "
                          "voices, stored in <cache_dir>/voices-custom on this node.")
    max_voices: int = Field(32, ge=1, le=1000, description="Uploaded voices that may exist at once (per node).")
    max_upload_mb: float = Field(16.0, gt=0.0, le=64.0, description="Largest upload accepted (MiB).")
    max_seconds: float = Field(30.0, ge=3.0, le=30.0, description="Longest recording accepted (s); at least "
                               "2 s are always required.")


class AppConfig(_Strict):
    """Everything ``build_app`` needs; ``serve_config.yaml`` and ``serve_config.cpu.yaml`` differ only here."""

    profile: Profile = "gpu"
    app_name: str = "bizra"
    cache_dir: str = Field(default_factory=default_cache_dir, description="Generated tiny checkpoints go here.")
    tiny_engine: bool = Field(False, description="Generate tiny random PersonaPlex checkpoints (CPU dev) into "
                              "<cache_dir>/tiny-personaplex on first start and reuse them.")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    voice_server: VoiceServerConfig = Field(default_factory=VoiceServerConfig)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)  # hybrid mode: local Qwen or a gateway
    tools: ToolsConfig = Field(default_factory=ToolsConfig)  # MCP servers the knowledge model may call
    qwen: QwenConfig | None = Field(None, exclude=True, description="Deprecated: the old name of `knowledge` "
                                    "(backend local). After loading it holds the colocated Qwen deployment's "
                                    "settings as `knowledge` sets them (disabled with a gateway).")
    router: RouterConfig = Field(default_factory=RouterConfig)
    transcriber: TranscriberConfig = Field(default_factory=TranscriberConfig)
    hybrid: HybridConfig = Field(default_factory=HybridConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)
    reliability: ReliabilityConfig = Field(default_factory=ReliabilityConfig)
    recording: RecordingConfig = Field(default_factory=RecordingConfig)
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)  # POST /api/sessions tickets
    voices: VoicesConfig = Field(default_factory=VoicesConfig)  # uploads of one's own voices (off by default)
    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig)  # /v1/realtime: voice names, bursts

    _deprecations: list[str] = PrivateAttr(default_factory=list)
    _knowledge_key: str = PrivateAttr("knowledge")

    @model_validator(mode="after")
    def _knowledge_from_qwen(self) -> AppConfig:
        """Read the old ``qwen:`` section into ``knowledge`` (said once in the log by ``build_app``)."""
        if self.qwen is not None:
            if "knowledge" in self.model_fields_set:
                raise ValueError("`qwen` is the old name of `knowledge`: keep only the `knowledge` section")
            self.knowledge = KnowledgeConfig(**self.qwen.model_dump(exclude_unset=True))
            self._knowledge_key = "qwen"
            self._deprecations.append("`args.qwen` is deprecated: rename the section to `args.knowledge` (same "
                                      "keys; `backend: local` is the default, `backend: openai` uses a gateway)")
        self.qwen = self.knowledge.local_view()
        return self

    @property
    def deprecations(self) -> list[str]:
        """Old keys this config still used (one log line each at start)."""
        return list(self._deprecations)

    @property
    def knowledge_key(self) -> str:
        """The section the knowledge model's settings were written in, for sentences naming a key."""
        return self._knowledge_key

    @model_validator(mode="after")
    def _cpu_dev_is_tiny(self) -> AppConfig:
        if self.profile == "cpu-dev" and self.needs_gpu:
            raise ValueError("the cpu-dev profile must not reserve GPUs (set num_gpus: 0)")
        return self

    @property
    def cpu_dev(self) -> bool:
        return self.profile == "cpu-dev"

    @property
    def tiny_engine_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() / "tiny-personaplex"

    @property
    def tiny_qwen_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() / "tiny-qwen2"

    @property
    def recording_dir(self) -> Path:
        return Path(self.recording.dir or Path(self.cache_dir) / "recordings").expanduser()

    @property
    def voice_uploads_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() / "voices-custom"

    @property
    def tiny_whisper_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() / "tiny-whisper"

    @property
    def needs_gpu(self) -> bool:
        knowledge = self.knowledge
        return (self.voice_server.num_gpus > 0 or (knowledge.enabled and knowledge.local and knowledge.num_gpus > 0)
                or (self.transcriber.enabled and self.transcriber.num_gpus > 0))
