"""The application config: ONE pydantic model, the ``args:`` of ``serve_config*.yaml``.

``bizra_voice.app:build_app`` validates it and turns it into Ray Serve deployment options, so the YAML
holds the product's settings (slots, models, fractions) and the deployment sizing follows from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bizra_voice import constants as C
from bizra_voice.engine.config import EngineConfig

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
    reject_margin: int = Field(2, ge=1, le=32, description="Requests a full replica still accepts so that "
                               "it can tell the client 'at capacity' (1013) instead of leaving it queued.")
    stats_interval_s: float = Field(2.0, gt=0.0, description="Period of session.stats events.")
    client_dir: str | None = Field(None, description="Folder served at / (default: the repo's client/).")
    debug_record_dir: str | None = Field(None, description="TEST HOOK: write each session's decoded input "
                                         "PCM and output text tokens to <dir>/<session_id>.npz on close.")

    def max_ongoing_requests(self, slots: int) -> int:
        return slots + self.reject_margin

    def autoscaling_config(self, slots: int) -> dict | None:
        if self.max_replicas <= self.min_replicas:
            return None
        return {
            "min_replicas": self.min_replicas,
            "initial_replicas": self.initial_replicas if self.initial_replicas is not None else self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": max(1.0, round(self.target_session_fraction * slots, 2)),
            "upscale_delay_s": 5.0,
            "downscale_delay_s": 300.0,
        }


class QwenConfig(_Strict):
    """The knowledge model (hybrid mode)."""

    enabled: bool = True
    model: str = Field(C.QWEN_REPO, description="HF repo id or local folder of a causal LM with a chat template.")
    tiny_random: bool = Field(False, description="Generate a tiny random Qwen2 + local tokenizer (CPU dev).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_new_tokens: int = Field(96, ge=1, le=2048)
    max_input_tokens: int = Field(2048, ge=32)
    system_prompt: str = Field(
        "You are the knowledge module of a voice assistant. Answer in one to three short spoken sentences, "
        "no lists, no markdown.", max_length=4000)
    num_gpus: float = Field(0.0, ge=0.0, le=8.0)
    num_cpus: float = Field(0.0, ge=0.0)
    num_replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(4, ge=1)
    gpu_memory_fraction: float | None = Field(None, gt=0.0, le=1.0, description="Cap of this process's "
                                              "CUDA allocator (fractional num_gpus does not cap memory).")


class RouterConfig(_Strict):
    allow_hybrid: bool = True
    max_load: float = Field(1.0, gt=0.0)
    deadline_ms: float = Field(1500.0, gt=0.0)
    status_timeout_s: float = Field(1.0, gt=0.0, description="Time the router waits for Qwen's status.")
    num_cpus: float = Field(0.0, ge=0.0)


class AppConfig(_Strict):
    """Everything ``build_app`` needs; ``serve_config.yaml`` and ``serve_config.cpu.yaml`` differ only here."""

    profile: Profile = "gpu"
    app_name: str = "bizra"
    cache_dir: str = Field(default_factory=default_cache_dir, description="Generated tiny checkpoints go here.")
    tiny_engine: bool = Field(False, description="Generate tiny random PersonaPlex checkpoints (CPU dev) into "
                              "<cache_dir>/tiny-personaplex on first start and reuse them.")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    voice_server: VoiceServerConfig = Field(default_factory=VoiceServerConfig)
    qwen: QwenConfig = Field(default_factory=QwenConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)

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
    def needs_gpu(self) -> bool:
        return self.voice_server.num_gpus > 0 or (self.qwen.enabled and self.qwen.num_gpus > 0)
