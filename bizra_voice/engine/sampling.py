"""Per-slot sampling that does not depend on who else is in the batch.

Each slot has its own temperature, top-k and seed. Randomness is a counter-based hash of
(seed, model position, stream, token id) turned into Gumbel noise, so a seeded session draws the same
tokens alone or batched with others, on any batch composition, without host syncs or per-slot generators
(which also keeps the step capturable in a CUDA graph). Greedy slots take the plain argmax, exactly as the
reference does with ``use_sampling=False``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

from bizra_voice.engine.api import SamplingParams

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (lowbias32) on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def hashed_uniform(seed: torch.Tensor, position: torch.Tensor, stream: int, token_ids: torch.Tensor) -> torch.Tensor:
    """Uniform (0, 1) noise [B, K] from seed [B], position [B], a stream id and token ids [B, K]."""
    seed_lo = seed & _MASK32
    seed_hi = (seed >> 32) & _MASK32
    h = _mix32(seed_lo ^ _mix32((position & _MASK32) ^ 0x632BE5AB))
    h = _mix32(h ^ seed_hi ^ ((stream * 0x9E3779B1) & _MASK32))
    h = _mix32(h[:, None] ^ (token_ids & _MASK32))
    return ((h >> 8).to(torch.float32) + 0.5) / float(1 << 24)


@dataclass
class SlotSampling:
    """Sampling parameters of every slot as device tensors (updated when a session takes a slot)."""

    temp_text: torch.Tensor
    topk_text: torch.Tensor
    temp_audio: torch.Tensor
    topk_audio: torch.Tensor
    greedy: torch.Tensor
    seed: torch.Tensor

    @classmethod
    def create(cls, slots: int, device: torch.device) -> SlotSampling:
        def zeros(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(slots, dtype=dtype, device=device)

        return cls(zeros(torch.float32), zeros(torch.long), zeros(torch.float32), zeros(torch.long),
                   torch.ones(slots, dtype=torch.bool, device=device), zeros(torch.long))

    def assign(self, slot: int, params: SamplingParams) -> int:
        """Store a session's parameters; returns the seed in use (drawn at random when none was given)."""
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        greedy = params.greedy
        self.temp_text[slot] = params.text_temperature
        self.temp_audio[slot] = params.audio_temperature
        self.topk_text[slot] = params.text_topk
        self.topk_audio[slot] = params.audio_topk
        self.greedy[slot] = greedy
        self.seed[slot] = seed
        return seed


def sample_tokens(logits: torch.Tensor, temp: torch.Tensor, topk: torch.Tensor, greedy: torch.Tensor,
                  seed: torch.Tensor, position: torch.Tensor, stream: int, max_topk: int) -> torch.Tensor:
    """Tokens [B] from logits [B, V]: argmax for greedy rows, else top-k Gumbel-max at each row's temperature."""
    logits = logits.float()
    best = logits.argmax(dim=-1)
    k = max(1, min(max_topk, logits.shape[-1]))
    values, indices = logits.topk(k, dim=-1)
    rank = torch.arange(k, device=logits.device)
    allowed = rank[None, :] < topk[:, None]
    noise = hashed_uniform(seed, position, stream, indices)
    gumbel = -torch.log(-torch.log(noise))
    safe_temp = torch.where(temp > 0, temp, torch.ones_like(temp))
    scores = torch.where(allowed, values / safe_temp[:, None] + gumbel, torch.full_like(values, float("-inf")))
    sampled = indices.gather(-1, scores.argmax(dim=-1, keepdim=True))[:, 0]
    use_argmax = greedy | (temp <= 0)
    return torch.where(use_argmax, best, sampled)
