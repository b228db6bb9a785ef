"""Engine configuration (one pydantic model, embedded in the app config that serve_config.yaml carries)."""

from __future__ import annotations

from typing import Literal

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
    slots: int = Field(8, ge=1, le=256, description="Concurrent sessions in one batched model step.")
    quantize_int8: bool = Field(False, description="int8 transformer weights (bitsandbytes, CUDA only).")
    cpu_offload_layers: int = Field(0, ge=0, description="Keep this many transformer layers on the CPU "
                                    "and stream them to the GPU on use (small GPUs).")
    cuda_graphs: bool = Field(True, description="Capture the batched tick in CUDA graphs (GPU only).")
    custom_voices_dir: str | None = Field(None, description="Folder of extra WAV/.pt voices, listed by file stem.")
    default_voice: str = C.DEFAULT_VOICE
    default_persona: str = C.DEFAULT_PERSONA
    max_prompt_chars: int = Field(C.MAX_PROMPT_CHARS, ge=16, le=100_000)
    max_pending_frames: int = Field(25, ge=2, description="Input frames a session may queue (2 s) "
                                    "before it is told it is too far behind.")
    reanchor_margin: int = Field(256, ge=16, description="Frames kept free at the end of the context "
                                 "window; a session re-anchors its persona when it reaches them.")
    reanchor_history: int = Field(250, ge=0, description="Recent conversation frames replayed after the "
                                  "persona when a long session re-anchors.")
