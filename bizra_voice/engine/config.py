"""Engine configuration (one pydantic model, embedded in the app config that serve_config.yaml carries)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from bizra_voice import constants as C


class EngineConfig(BaseModel):
    """Everything the PersonaPlex engine needs to load and run."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(
        C.PERSONAPLEX_REPO,
        description="Hugging Face repo id (gated: accept the licence, set HF_TOKEN) or a local directory "
        "holding the same file names.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    hf_token_env: str = Field("HF_TOKEN", description="Environment variable that holds the Hugging Face token.")
    cache_dir: str | None = Field(None, description="Where downloads and extracted voices go (default: HF cache).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32", "float64"] = Field(
        "auto", description="auto = bfloat16 on GPU, float32 on CPU.")
    slots: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        "auto", description="Concurrent sessions in one batched model step: 'auto' measures this replica at "
        "start (memory per slot, tick time per batch size) and takes the most it can serve in real time; a "
        "number overrides the time bound and is still checked against memory.")
    max_slots: int = Field(64, ge=1, le=256, description="Upper bound of 'auto' (and of the calibration).")
    tick_budget_ms: float = Field(60.0, gt=0.0, lt=C.FRAME_MS, description="p99 tick time that 'auto' allows "
                                  "(of the 80 ms frame; the rest is left for codecs, prefills and jitter).")
    memory_fraction: float | None = Field(None, gt=0.0, le=1.0, description="Share of the device's memory this "
                                          "engine may size itself to (default: the replica's voice_server."
                                          "num_gpus when below 1, else the whole device).")
    calibration_ticks: int = Field(24, ge=4, le=1000, description="Timed ticks per batch size when sizing.")
    calibration_timeout_s: float = Field(90.0, gt=0.0, description="Sizing stops probing larger batches "
                                         "after this long and decides on what it measured.")
    prefill_chunk: int = Field(64, ge=1, le=4096, description="Prompt positions prefilled per step; joining "
                               "prompts and re-anchors run step by step between ticks.")
    prefill_slice_ms: float = Field(15.0, gt=0.0, description="Prefill work run between two ticks (at least "
                                    "one step), so a prefill delays running sessions by at most about this.")
    quantize_int8: bool = Field(False, description="int8 transformer weights (bitsandbytes, CUDA only).")
    cpu_offload_layers: int = Field(0, ge=0, description="Keep this many transformer layers on the CPU "
                                    "and stream them to the GPU on use (small GPUs).")
    cuda_graphs: bool = Field(True, description="Capture the batched tick in CUDA graphs (GPU only).")
    cpu_threads: int | None = Field(1, ge=1, le=256, description="torch intra-op threads when the engine runs "
                                    "on the CPU (None: torch's default, one per core). One: measured on a busy "
                                    "2-core machine, a second thread left the median tick as it was and made "
                                    "its p99 up to 100x worse (spinning OpenMP threads of a shared machine).")
    custom_voices_dir: str | None = Field(None, description="Folder of extra WAV/.pt voices, listed by file stem.")
    default_voice: str = C.DEFAULT_VOICE
    default_persona: str = C.DEFAULT_PERSONA
    max_prompt_chars: int = Field(C.MAX_PROMPT_CHARS, ge=16, le=100_000)
    max_pending_frames: int = Field(25, ge=2, description="Input frames a session may queue (2 s); past "
                                    "that the oldest are dropped to catch up (reported, never silent).")
    catchup_frames: int = Field(2, ge=1, description="Queued input frames kept when a session catches up.")
    behind_frames: int = Field(6, ge=1, description="A session with more queued input frames than this "
                               "when it is stepped is behind (480 ms).")
    behind_grace_s: float = Field(10.0, gt=0.0, description="A session behind for longer than this, without "
                                  "a break, is ended (close 1013, reason given).")
    admission_window_s: float = Field(5.0, ge=0.0, description="New sessions are refused while the p99 tick "
                                      "of the last this-many seconds exceeds tick_budget_ms (0 = off).")
    reanchor_margin: int = Field(256, ge=16, description="Frames kept free at the end of the context "
                                 "window; a session re-anchors its persona when it reaches them.")
    reanchor_history: int = Field(250, ge=0, description="Recent conversation frames replayed after the "
                                  "persona when a long session re-anchors.")
