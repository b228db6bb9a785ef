"""Constants shared by the engine, the protocol and the clients (no heavy imports)."""

from __future__ import annotations

SAMPLE_RATE = 24_000
FRAME_RATE = 12.5
FRAME_SIZE = 1920  # samples per 80 ms model frame at 24 kHz
FRAME_MS = 80.0

PERSONAPLEX_REPO = "nvidia/personaplex-7b-v1"
QWEN_REPO = "Qwen/Qwen2.5-1.5B-Instruct"

LM_FILENAME = "model.safetensors"
MIMI_FILENAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
TOKENIZER_FILENAME = "tokenizer_spm_32k_3.model"
VOICES_ARCHIVE = "voices.tgz"

PRESET_VOICES: tuple[str, ...] = (
    "NATF0", "NATF1", "NATF2", "NATF3",
    "NATM0", "NATM1", "NATM2", "NATM3",
    "VARF0", "VARF1", "VARF2", "VARF3", "VARF4",
    "VARM0", "VARM1", "VARM2", "VARM3", "VARM4",
)
DEFAULT_VOICE = "NATM1"

DEFAULT_PERSONA = (
    "You are BIZRA, a sovereign AI assistant. You help humans with الإحسان (excellence). "
    "You are wise, precise, and helpful. You never assume — you ask when uncertain. "
    "You are built on local compute, respect privacy, and operate with transparency. "
    "Your voice is calm and confident."
)

# PersonaPlex prompt phase (verified against the reference implementation).
SILENCE_FRAMES = 6
TEXT_PAD_ID = 3
SILENCE_TOKENS: tuple[int, ...] = (948, 243, 1178, 546, 1736, 1030, 1978, 2008)
SINE_TOKENS: tuple[int, ...] = (430, 1268, 381, 1611, 1095, 1495, 56, 472)
SYSTEM_TAG = "<system>"

# Sampling defaults of PersonaPlex.
AUDIO_TEMPERATURE = 0.8
AUDIO_TOPK = 250
TEXT_TEMPERATURE = 0.7
TEXT_TOPK = 25

MAX_PROMPT_CHARS = 4000
MAX_TYPED_CHARS = 2000  # one typed question (hybrid mode); longer ones are refused, never cut
