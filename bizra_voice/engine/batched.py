"""B session slots in one batched PersonaPlex step (stock moshi ``LMGen`` + Mimi, exec masks).

One call of :meth:`BatchedEngine.tick` runs Mimi encode -> LM step -> Mimi decode for every slot that has
an input frame; the other rows keep their state untouched (exec mask). A joining session's prompt is
prefilled in a private batch-of-one streaming state and its KV cache copied into its row, so it neither
costs the running rows a batched forward nor touches their caches.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from moshi.models.lm import LMGen
from moshi.modules.transformer import RingKVCache

from bizra_voice import constants as C
from bizra_voice.engine.api import MAX_AUDIO_TOPK, MAX_TEXT_TOPK, SamplingParams
from bizra_voice.engine.loading import ModelBundle
from bizra_voice.engine.prefix import PrefixStates, Rows, bucket_for, buckets, pad_rows
from bizra_voice.engine.sampling import SlotSampling, sample_tokens
from bizra_voice.prompt import build_timeline, delayed_columns, extend_timeline
from bizra_voice.voices import VoicePrompt

UNGENERATED = -2
MAX_GUIDE_TOKENS = 512  # longest answer (in PersonaPlex text tokens) one guidance can hold
DEFAULT_PREFILL_CHUNK = 64  # prompt positions per prefill step (the runtime fits steps between ticks)
_SILENT_TEXT_IDS = (0, 3)  # PersonaPlex: <unk>/EPAD and PAD are never sent to clients


def text_piece(tokenizer: Any, token: int) -> str | None:
    """The word piece a text token stands for ('▁' -> ' '), or None for padding and out-of-vocabulary ids."""
    if token in _SILENT_TEXT_IDS or not 0 <= token < tokenizer.get_piece_size():
        return None
    return tokenizer.id_to_piece(token).replace("▁", " ")


class _SlotLMGen(LMGen):
    """``LMGen`` whose depformer samples each row with its own parameters (see ``sampling``)."""

    def __init__(self, lm: Any, engine: BatchedEngine) -> None:
        super().__init__(lm, use_sampling=False, support_out_of_sync=True,
                         on_text_logits_hook=engine._on_text_logits, on_text_hook=engine._on_text,
                         on_audio_hook=engine._on_audio)
        self._engine = engine

    def depformer_step(self, text_token: torch.Tensor, transformer_out: torch.Tensor) -> torch.Tensor:
        """Runs inside moshi's CUDA graph on GPU: it may read only tensors whose storage never changes
        (``engine._position``, the sampling tensors) and Python values fixed before capture."""
        engine = self._engine
        lm = self.lm_model
        r = engine._r  # the rows being stepped: views of fixed storage, one set per prefix size
        # Not ``self._streaming_state.offsets``: LMGen rebinds that attribute every step, so a captured
        # graph would keep reading the storage of the step it was captured on.
        position = r.position
        previous = text_token
        tokens = []
        with lm.depformer.streaming(text_token.shape[0]):
            for cb in range(lm.dep_q):
                logits = lm.forward_depformer(cb, previous[:, None, None], transformer_out)
                previous = sample_tokens(logits[:, 0, 0], r.temp_audio, r.topk_audio, r.greedy, r.seed,
                                         position, 1 + cb, engine.topk_bound_audio)
                tokens.append(previous)
        return torch.stack(tokens, dim=1)


@dataclass
class PreparedPrompt:
    """Everything the prefill of one session needs, computed off the tick thread."""

    voice: VoicePrompt | None
    tokens: list[int]

    @property
    def length(self) -> int:
        return 0 if self.voice is None else self.voice.frames + 2 * C.SILENCE_FRAMES + len(self.tokens)


@dataclass
class TickResult:
    """Per-row results of one tick (only rows in ``produced`` carry a frame)."""

    produced: np.ndarray  # bool [B]
    text: np.ndarray  # int64 [B]
    agent: np.ndarray  # int64 [B, 8]
    pcm: np.ndarray  # float32 [B, FRAME_SIZE]
    guided: np.ndarray | None = None  # bool [B]: the text token came from guidance
    model_text: np.ndarray | None = None  # int64 [B]: what the model itself chose before guidance


def _copy_row(dst: Any, src: Any, row: int) -> None:
    """Copy batch row 0 of a batch-of-one streaming state into row ``row`` of a batched one."""
    for field in dataclasses.fields(dst):
        a, b = getattr(dst, field.name), getattr(src, field.name)
        if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == dst.batch_size:
            a[row] = b[0]
        elif isinstance(a, RingKVCache):
            a.cache[:, row] = b.cache[:, 0]
            if a.end_offset.shape[0] == dst.batch_size:
                a.end_offset[row] = b.end_offset[0]


class BatchedEngine:
    """The model side of the engine: owns the batched streaming state; single-threaded by contract."""

    def __init__(self, bundle: ModelBundle, slots: int) -> None:
        self.bundle = bundle
        self.slots = slots
        self.device = bundle.device
        lm = bundle.lm
        self.lm = lm
        self.sampling = SlotSampling.create(slots, self.device)
        self.max_topk_audio = min(MAX_AUDIO_TOPK, lm.card)
        self.max_topk_text = min(MAX_TEXT_TOPK, lm.text_card)
        # The sampler's fixed top-k size. CUDA graphs need it static (the ceiling); without graphs it is the
        # largest k a slot asked for, because a full 2048-wide sort per codebook dominates a CPU tick.
        self._static_topk = self.device.type == "cuda"
        self._slot_topk: list[tuple[int, int]] = [(1, 1)] * slots  # (text, audio) per slot, 1 when greedy
        self.topk_bound_text = self.max_topk_text
        self.topk_bound_audio = self.max_topk_audio
        self._update_topk_bounds()
        self._position = torch.zeros(slots, dtype=torch.long, device=self.device)  # LMGen offsets, fixed storage
        self._pinned: dict[str, torch.Tensor] = {}
        self.force_text = torch.full((slots,), -1, dtype=torch.long, device=self.device)
        self.force_audio = torch.full((slots, lm.dep_q), -1, dtype=torch.long, device=self.device)
        self._text_logits: torch.Tensor | None = None
        # Guided inner monologue (hybrid mode): per-row answer tokens that replace the model's word tokens.
        self.guide_tokens = torch.zeros((slots, MAX_GUIDE_TOKENS), dtype=torch.long, device=self.device)
        self.guide_length = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.guide_index = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.guided = torch.zeros(slots, dtype=torch.bool, device=self.device)
        self.model_text = torch.zeros(slots, dtype=torch.long, device=self.device)  # the model's own choice
        # A text token sampled at one step is output by the row's next step: report its flags then.
        self._sampled_guided = torch.zeros(slots, dtype=torch.bool, device=self.device)
        self._sampled_model_text = torch.zeros(slots, dtype=torch.long, device=self.device)
        # The private batch-of-one state used for prefills, created before the batched one.
        with lm.streaming(1):
            self._scratch_state = lm.get_streaming_state()
        self.lm_gen = _SlotLMGen(lm, self)
        self.mimi = bundle.mimi
        self._streams = [self.lm_gen.streaming(slots), self.mimi.streaming(slots)]
        self._lm_state = lm.get_streaming_state()
        self._sine = torch.tensor(C.SINE_TOKENS, dtype=torch.long, device=self.device)
        self._silence = torch.tensor(C.SILENCE_TOKENS, dtype=torch.long, device=self.device)
        self._init_text = lm.text_card
        self._init_audio = lm.card
        # Host-side model position of every row, and a device ring of each row's recent conversation frames
        # (text, 8 agent codes, 8 user codes) from which a long session is re-anchored.
        self.positions = np.zeros(slots, dtype=np.int64)
        self.history_size = 0
        self.reanchor_margin = 0
        self._history = torch.zeros((slots, 1, 17), dtype=torch.long, device=self.device)
        self._history_count = torch.zeros(slots, dtype=torch.long, device=self.device)
        self._prompts: dict[int, PreparedPrompt] = {}
        self._reanchoring: set[int] = set()  # rows whose re-anchor prefill is under way
        self.prefill_chunk = DEFAULT_PREFILL_CHUNK  # positions per prefill step
        self._started_seed = 0
        # Prefix steps (engine/prefix.py): views of the per-row tensors and streaming states per row count.
        self.prefix_steps = True
        self._row_views: dict[int, Rows] = {}
        self._r = self._rows(slots)
        self._prefix_lm_gen = PrefixStates(self.lm_gen, slots)
        self._prefix_lm = PrefixStates(lm, slots)
        self._prefix_mimi = PrefixStates(self.mimi, slots)

    def close(self) -> None:
        """Leave streaming mode so the models can serve another engine (tests, conformance runs)."""
        while self._streams:
            self._streams.pop().close()

    # ---- hooks called inside LMGen.step -------------------------------------------------------------
    def _on_text_logits(self, logits: torch.Tensor) -> None:
        self._text_logits = logits

    def _on_text(self, text_token: torch.Tensor) -> None:
        r = self._r
        assert self._text_logits is not None
        r.position.copy_(self.lm_gen._streaming_state.offsets)  # read by depformer_step (graphed)
        sampled = sample_tokens(self._text_logits[:, 0, 0], r.temp_text, r.topk_text, r.greedy, r.seed,
                                r.position, 0, self.topk_bound_text)
        # Guidance: where the model chose a word (not PAD/EPAD), say the next answer token instead, so the
        # model keeps its own timing and voice and speaks the answer's words in order.
        r.model_text.copy_(sampled)
        is_word = (sampled != C.TEXT_PAD_ID) & (sampled != 0)
        executing = self.lm_gen._streaming_state.exec_mask
        use = is_word & executing & (r.guide_index < r.guide_length)
        guided = r.guide_tokens.gather(1, r.guide_index.clamp(max=MAX_GUIDE_TOKENS - 1)[:, None])[:, 0]
        sampled = torch.where(use, guided, sampled)
        r.guide_index.add_(use.long())
        r.guided.copy_(use)
        text_token.copy_(torch.where(r.force_text >= 0, r.force_text, sampled))

    def _on_audio(self, audio_tokens: torch.Tensor) -> None:
        r = self._r
        audio_tokens.copy_(torch.where(r.force_audio >= 0, r.force_audio, audio_tokens))

    # ---- prefix steps: a tick computes only the rows up to the highest active one ------------------------
    def _rows(self, n: int) -> Rows:
        rows = self._row_views.get(n)
        if rows is None:
            s = self.sampling
            rows = self._row_views[n] = Rows(
                n=n, position=self._position[:n], force_text=self.force_text[:n], force_audio=self.force_audio[:n],
                guide_tokens=self.guide_tokens[:n], guide_length=self.guide_length[:n],
                guide_index=self.guide_index[:n], guided=self.guided[:n], model_text=self.model_text[:n],
                sampled_guided=self._sampled_guided[:n], sampled_model_text=self._sampled_model_text[:n],
                history=self._history[:n], history_count=self._history_count[:n], temp_text=s.temp_text[:n],
                topk_text=s.topk_text[:n], temp_audio=s.temp_audio[:n], topk_audio=s.topk_audio[:n],
                greedy=s.greedy[:n], seed=s.seed[:n])
        return rows

    @contextlib.contextmanager
    def _prefix(self, n: int) -> Iterator[int]:
        """Step only rows ``0..n-1`` inside this block (``n`` is rounded up to a bucket size)."""
        n = bucket_for(n, self.slots) if self.prefix_steps else self.slots
        previous = self._r
        self._r = self._rows(n)
        try:
            with self._prefix_lm_gen.rows(n), self._prefix_lm.rows(n), self._prefix_mimi.rows(n):
                yield n
        finally:
            self._r = previous

    @torch.no_grad()
    def warm_buckets(self, ticks: int = 2) -> list[int]:
        """Run ``ticks`` idle ticks (no row active: no state changes) at every prefix size, so that on a GPU
        each bucket's CUDA graphs are captured now rather than during a live session's first tick there."""
        sizes = buckets(self.slots) if self.prefix_steps else [self.slots]
        idle = np.zeros(self.slots, dtype=bool)
        pcm = np.zeros((self.slots, C.FRAME_SIZE), dtype=np.float32)
        for n in sizes:
            for _ in range(ticks):
                with self._prefix(n):
                    self._idle_tick(pcm[:n], idle)
        return sizes

    def _idle_tick(self, pcm: np.ndarray, idle: np.ndarray) -> None:
        n = pcm.shape[0]
        mask = self._to_device("active", idle[:n])
        audio = self._to_device("pcm", pcm)[:, None, :]
        self.mimi.set_exec_mask(mask)
        codes = self.mimi.encode(audio)
        tokens, produced = self._lm_step(codes, mask, idle)
        self.mimi.set_exec_mask(produced)
        out = self.mimi.decode(tokens[:, 1:].clamp(min=0)[:, :, None])
        self._to_host(out[:, 0].float())

    def _rows_needed(self, active: np.ndarray) -> int:
        rows = np.flatnonzero(active)
        return int(rows[-1]) + 1 if rows.size else 1

    # ---- slot lifecycle ------------------------------------------------------------------------------
    def _mask(self, rows: list[int] | np.ndarray) -> torch.Tensor:
        mask = torch.zeros(self.slots, dtype=torch.bool)
        mask[torch.as_tensor(np.asarray(rows, dtype=np.int64))] = True
        return mask.to(self.device)

    def reset_slot(self, slot: int, codec: bool = True) -> None:
        """Reset the row's LM state (and its Mimi streams unless ``codec`` is False: a re-anchor keeps the
        audio streams running)."""
        mask = self._mask([slot])
        self.lm_gen.reset_streaming(mask)
        if codec:
            self.mimi.reset_streaming(mask)
        self.force_text[slot] = -1
        self.force_audio[slot] = -1
        self.cancel_guidance(slot)
        self._sampled_guided[slot] = False
        if codec:  # a new session on this row: no re-anchor of the old one may go on
            self._reanchoring.discard(slot)

    def set_guidance(self, slot: int, tokens: list[int]) -> int:
        """Queue answer tokens for ``slot`` (replacing any earlier guidance); returns how many were taken."""
        # <unk>/EPAD (0) and PAD (3) are not words: never force them (an out-of-vocabulary character in the
        # answer would otherwise be "said" as a silent token and vanish from the text stream).
        tokens = [t for t in tokens if 0 <= t < self.lm.text_card and t not in _SILENT_TEXT_IDS][:MAX_GUIDE_TOKENS]
        self.guide_tokens[slot].zero_()
        if tokens:
            self.guide_tokens[slot, : len(tokens)] = torch.tensor(tokens, dtype=torch.long, device=self.device)
        self.guide_length[slot] = len(tokens)
        self.guide_index[slot] = 0
        return len(tokens)

    def cancel_guidance(self, slot: int) -> int:
        """Stop guiding ``slot`` (barge-in); returns how many answer tokens were left unsaid."""
        left = int(self.guide_length[slot] - self.guide_index[slot])
        self.guide_length[slot] = 0
        self.guide_index[slot] = 0
        return max(0, left)

    def guidance_progress(self, slot: int) -> tuple[int, int]:
        """(tokens said, tokens queued) of ``slot``'s current guidance."""
        return int(self.guide_index[slot]), int(self.guide_length[slot])

    def set_sampling(self, slot: int, params: SamplingParams) -> int:
        greedy = params.greedy
        self._slot_topk[slot] = ((1 if greedy or params.text_temperature <= 0 else params.text_topk),
                                 (1 if greedy or params.audio_temperature <= 0 else params.audio_topk))
        self._update_topk_bounds()
        return self.sampling.assign(slot, params)

    def _update_topk_bounds(self) -> None:
        if self._static_topk:
            return
        self.topk_bound_text = min(self.max_topk_text, max(k for k, _ in self._slot_topk))
        self.topk_bound_audio = min(self.max_topk_audio, max(k for _, k in self._slot_topk))

    def _embed_columns(self, columns: np.ndarray) -> torch.Tensor:
        """Summed input embeddings [T, dim] of delayed-layout columns [17, T], in the order the LM sums them."""
        lm = self.lm
        seq = torch.from_numpy(columns).to(self.device)
        x = None
        for cb in range(lm.num_audio_codebooks):
            emb = lm.emb[cb](seq[cb + lm.audio_offset])
            x = emb if x is None else x + emb
        text = lm.text_emb(seq[0])
        return text if x is None else x + text

    @torch.no_grad()
    def start_slot(self, slot: int, prompt: PreparedPrompt, params: SamplingParams) -> int:
        """Reset ``slot`` and teacher-force its voice + text prompt; returns the sampling seed in use."""
        steps = self.start_slot_steps(slot, prompt, params)
        for _ in steps:
            pass
        return self._started_seed

    def start_slot_steps(self, slot: int, prompt: PreparedPrompt, params: SamplingParams) -> Iterator[None]:
        """``start_slot`` as resumable steps: each ``next()`` prefills one chunk of at most ``prefill_chunk``
        positions in the private batch-of-one state (the running rows are not touched), so the runtime can
        spread a prompt over the gaps between ticks. The last step puts the slot in the batch.
        ``self._started_seed`` holds the seed once it is exhausted. One prefill at a time (scratch state)."""
        self.reset_slot(slot)
        self._started_seed = self.set_sampling(slot, params)
        self._prompts[slot] = prompt
        if prompt.voice is None:
            return
        timeline = build_timeline(prompt.voice.codes, prompt.tokens)
        cols, start = self._timeline_columns(timeline, prompt.voice)
        # The last position is stepped below with its text and semantic code free.
        yield from self._prefill_steps(self._prefix_parts(prompt.voice, start) + [self._embed(cols[:, :-1])])
        self._commit_prefill(slot)
        total = timeline.length
        state = self.lm_gen._streaming_state
        ct = state.cache.shape[2]
        state.offsets[slot] = total - 1
        state.cache[slot, :, (total - 1) % ct] = torch.from_numpy(cols[:, -1]).to(self.device)
        self.positions[slot] = total - 1
        # Last prompt step: text and semantic code free, acoustic codes of the last prompt frame forced.
        self.force_audio[slot, 1:] = self._silence[1:]
        with self._prefix(slot + 1) as n:
            mask = self._mask([slot])[:n]
            user = self._sine.view(1, -1, 1).expand(n, -1, 1).contiguous()
            self._lm_step(user, mask, np.arange(self.slots) == slot, conversation=False)
        self.force_audio[slot] = -1

    def _timeline_columns(self, timeline: Any, voice: VoicePrompt) -> tuple[np.ndarray, int]:
        """Delayed-layout input columns of the timeline from the first position not covered by the voice's
        saved embeddings (.pt voices carry positions 0..N-2 ready-made), and that first position."""
        start = 0 if voice.embeddings is None else voice.frames - 1
        cols = delayed_columns(timeline.text[start:], timeline.agent[start:], timeline.user[start:], start,
                               None, None, self._init_text, self._init_audio)
        if voice.tail_column is not None:
            cols[:, 0] = voice.tail_column
        return cols, start

    def _prefix_parts(self, voice: VoicePrompt, start: int) -> list[torch.Tensor]:
        if voice.embeddings is not None and start > 0:
            return [voice.embeddings.to(device=self.device, dtype=self.bundle.dtype)]
        return []

    def _embed(self, columns: np.ndarray) -> torch.Tensor:
        if not columns.shape[1]:
            return torch.zeros((0, self.lm.dim), dtype=self.bundle.dtype, device=self.device)
        return self._embed_columns(columns).to(self.bundle.dtype)

    def _prefill_steps(self, parts: list[torch.Tensor], reset: bool = True) -> Iterator[None]:
        """Run the transformer over prompt embeddings in the private batch-of-one state, ``prefill_chunk``
        positions per step (yielding between chunks). ``reset``: start from an empty state."""
        x = torch.cat([p for p in parts if p.shape[0]], dim=0) if any(p.shape[0] for p in parts) else None
        if reset:
            self._in_scratch(self.lm.reset_streaming)
        if x is None:
            return
        for begin in range(0, x.shape[0], self.prefill_chunk):
            chunk = x[begin:begin + self.prefill_chunk]
            self._in_scratch(lambda c=chunk: self.lm.transformer(c[None]))
            if begin + self.prefill_chunk < x.shape[0]:
                yield

    def _in_scratch(self, fn: Any) -> None:
        lm = self.lm
        lm.set_streaming_state(self._scratch_state)
        try:
            fn()
        finally:
            lm.set_streaming_state(self._lm_state)

    def _commit_prefill(self, slot: int) -> None:
        """Copy the prefilled batch-of-one state into row ``slot`` of the batched state."""
        for name, batched in self._lm_state.items():
            _copy_row(batched, self._scratch_state[name], slot)

    # ---- the tick ------------------------------------------------------------------------------------
    def _lm_step(self, codes: torch.Tensor, mask: torch.Tensor, host_mask: np.ndarray,
                 conversation: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """One LM step of the rows in ``self._r`` (inside ``_prefix``): ``codes`` [n, 8, 1] and ``mask`` [n] on
        the device, ``host_mask`` [B] its host copy (positions, no sync)."""
        r = self._r
        self.lm_gen.set_exec_mask(mask)
        reported_guided = r.sampled_guided.clone()
        reported_model_text = r.sampled_model_text.clone()
        tokens = self.lm_gen.step(codes)[:, :, 0]
        self._record_history(tokens, codes[:, :, 0], mask, host_mask, conversation)
        r.sampled_guided.copy_(torch.where(mask, r.guided, r.sampled_guided))
        r.sampled_model_text.copy_(torch.where(mask, r.model_text, r.sampled_model_text))
        r.guided.copy_(reported_guided)
        r.model_text.copy_(reported_model_text)
        return tokens, mask & (tokens[:, 1:] >= 0).all(dim=-1)

    # ---- long sessions -------------------------------------------------------------------------------
    def keep_history(self, frames: int, margin: int) -> None:
        """Remember each row's last ``frames`` conversation frames and re-anchor ``margin`` frames before the
        end of the context window."""
        self.history_size = frames
        self.reanchor_margin = margin
        self._history = torch.zeros((self.slots, max(1, frames), 17), dtype=torch.long, device=self.device)
        self._history_count.zero_()
        self._row_views.clear()  # they hold views of the old history tensor
        self._r = self._rows(self.slots)

    def _record_history(self, tokens: torch.Tensor, user: torch.Tensor, mask: torch.Tensor, host_mask: np.ndarray,
                        conversation: bool) -> None:
        self.positions += host_mask.astype(np.int64)
        if not self.history_size or not conversation:
            return
        r = self._r
        frame = torch.cat([tokens, user], dim=1)  # [n, 17]: text, agent 8 (un-delayed), user 8
        valid = mask & (tokens[:, 1:] >= 0).all(dim=-1)
        index = (r.history_count % self.history_size)[:, None, None].expand(-1, 1, 17)
        current = r.history.gather(1, index)
        r.history.scatter_(1, index, torch.where(valid[:, None, None], frame[:, None, :], current))
        r.history_count.add_(valid.long())

    def needs_reanchor(self, slot: int) -> bool:
        """The row has reached the re-anchor margin and no re-anchor of it is under way."""
        return self.history_size > 0 and slot in self._prompts and self._prompts[slot].voice is not None and \
            slot not in self._reanchoring and self.positions[slot] >= self.bundle.context - self.reanchor_margin

    @torch.no_grad()
    def reanchor(self, slot: int) -> int:
        """Restart ``slot``'s context as persona prompt + its most recent frames (all at once); see
        ``reanchor_steps``. Returns the row's new position."""
        for _ in self.reanchor_steps(slot):
            pass
        return int(self.positions[slot])

    def reanchor_steps(self, slot: int) -> Iterator[None]:
        """Restart ``slot``'s context as persona prompt + its most recent frames, keeping the conversation going.

        Past the model's context window (3000 frames, 4 minutes) the persona prompt would slide out and the
        persona fade. Instead the row is re-prefilled with its voice and text prompt followed by the last
        ``history_size`` frames it heard and said, teacher-forced, so it keeps both its identity and the
        recent conversation. As resumable steps: the prompt and the history are prefilled chunk by chunk in
        the private state while the row keeps running on its old context (ticks may run between steps);
        the last step appends the frames the row produced meanwhile and swaps the new context in.
        """
        self._reanchoring.add(slot)  # at once: the row must not ask for a second one meanwhile
        return self._reanchor_steps(slot)

    def reprompt_steps(self, slot: int, prompt: PreparedPrompt) -> Iterator[None]:
        """A live persona and/or voice change: re-anchor ``slot`` on ``prompt`` plus its recent conversation,
        as resumable steps (the row keeps talking on its old context until the last step swaps the new one
        in; the audio streams are not reset). If a step fails, the row keeps its old prompt."""
        old = self._prompts[slot]
        self._prompts[slot] = prompt
        try:
            yield from self.reanchor_steps(slot)
        except BaseException:
            self._prompts[slot] = old
            raise

    def _reanchor_steps(self, slot: int) -> Iterator[None]:
        prompt = self._prompts[slot]
        assert prompt.voice is not None
        count0 = int(self._history_count[slot])
        room = self.bundle.context - self.reanchor_margin - prompt.length - 1
        kept = max(0, min(count0, self.history_size, room))
        base = build_timeline(prompt.voice.codes, prompt.tokens)
        first = self._history_rows(slot, count0 - kept, kept)
        timeline = extend_timeline(base, first)
        cols, start = self._timeline_columns(timeline, prompt.voice)
        try:
            yield from self._prefill_steps(self._prefix_parts(prompt.voice, start) + [self._embed(cols)])
            yield
            # The frames this row heard and said while the chunks ran complete the new context.
            new = min(int(self._history_count[slot]) - count0, self.history_size)
            recent = self._history_rows(slot, int(self._history_count[slot]) - new, new)
            full = extend_timeline(timeline, recent)
            if full.length >= self.bundle.context:
                raise RuntimeError(f"re-anchored context of {full.length} frames exceeds {self.bundle.context}")
            if len(recent):
                at = timeline.length
                tail = delayed_columns(full.text[at:], full.agent[at:], full.user[at:], at, full.agent[at - 1, 1:],
                                       full.user[at - 1, 1:], self._init_text, self._init_audio)
                for _ in self._prefill_steps([self._embed(tail)], reset=False):
                    pass
            self._swap_in_reanchored(slot, full, np.concatenate([first, recent]))
        finally:
            self._reanchoring.discard(slot)

    def _history_rows(self, slot: int, first: int, count: int) -> np.ndarray:
        """Frames ``first .. first+count-1`` (by count) of the row's history ring, [count, 17]."""
        if count <= 0 or not self.history_size:
            return np.zeros((0, 17), dtype=np.int64)
        rows = [(first + i) % self.history_size for i in range(count)]
        return self._history[slot, rows].cpu().numpy()

    def _swap_in_reanchored(self, slot: int, timeline: Any, history: np.ndarray) -> None:
        """Replace row ``slot``'s context by the prefilled one; the next tick carries on from the token the
        row already sampled for its next position."""
        state = self.lm_gen._streaming_state
        ct = state.cache.shape[2]
        pending = state.cache[slot, 0:2, int(state.offsets[slot]) % ct].cpu().numpy()
        guide = (self.guide_tokens[slot].clone(), self.guide_length[slot].clone(), self.guide_index[slot].clone())
        sampled = (self._sampled_guided[slot].clone(), self._sampled_model_text[slot].clone())
        self.reset_slot(slot, codec=False)
        self.guide_tokens[slot], self.guide_length[slot], self.guide_index[slot] = guide
        self._sampled_guided[slot], self._sampled_model_text[slot] = sampled
        self._history_count[slot] = 0
        for frame in history[-self.history_size:] if self.history_size else []:  # kept for the next re-anchor
            self._history[slot, int(self._history_count[slot]) % self.history_size] = torch.from_numpy(frame)
            self._history_count[slot] += 1
        self._commit_prefill(slot)
        total = timeline.length
        # The text and semantic code sampled for the next position, with the acoustic codes of the last
        # timeline frame (delay 1), form the column the next tick reads.
        column = np.concatenate([pending[:2], timeline.agent[-1, 1:], timeline.user[-1, :1], timeline.user[-1, 1:]])
        state.offsets[slot] = total
        state.cache[slot, :, total % ct] = torch.from_numpy(column.astype(np.int64)).to(self.device)
        self.positions[slot] = total

    def _to_device(self, name: str, array: np.ndarray) -> torch.Tensor:
        """Host input -> device; on CUDA through a pinned staging buffer so the copy is asynchronous."""
        host = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type != "cuda":
            return host
        staging = self._pinned_buffer(f"in:{name}", host)
        staging.copy_(host)
        return staging.to(self.device, non_blocking=True)

    def _pinned_buffer(self, key: str, like: torch.Tensor) -> torch.Tensor:
        key = f"{key}:{tuple(like.shape)}"  # one per prefix size: buckets don't reallocate each other's
        buf = self._pinned.get(key)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = torch.empty(like.shape, dtype=like.dtype, pin_memory=True)
            self._pinned[key] = buf
        return buf

    def _to_host(self, *tensors: torch.Tensor) -> list[np.ndarray]:
        """All of a step's outputs to the host with ONE wait: async copies into pinned buffers, one sync."""
        if self.device.type != "cuda":
            return [t.numpy().copy() for t in tensors]
        buffers = []
        for i, t in enumerate(tensors):
            buf = self._pinned_buffer(f"out:{i}", t)
            buf.copy_(t, non_blocking=True)
            buffers.append(buf)
        torch.cuda.current_stream(self.device).synchronize()
        return [b.numpy().copy() for b in buffers]

    @torch.no_grad()
    def step_codes(self, user_codes: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """LM step on given user Mimi codes [B, 8] (no audio codec): tokens [B, 9] and the produced mask."""
        active = np.asarray(active, dtype=bool)
        with self._prefix(self._rows_needed(active)) as n:
            mask = self._to_device("active", active[:n])
            codes = self._to_device("codes", np.asarray(user_codes)[:n])[:, :, None]
            tokens, produced = self._lm_step(codes, mask, active)
            packed, = self._to_host(torch.cat([tokens, produced[:, None].long()], dim=1))
        packed = pad_rows(packed, self.slots, fill=0)
        return packed[:, :-1].copy(), packed[:, -1].astype(bool)

    @torch.no_grad()
    def tick(self, pcm: np.ndarray, active: np.ndarray) -> TickResult:
        """One 80 ms step for the rows in ``active`` (bool [B]); ``pcm`` is float32 [B, FRAME_SIZE].

        No host sync until the end: every output (tokens, flags, PCM) comes back in one transfer. Only the
        rows up to the highest active one are computed (rounded up to a bucket size: ``engine/prefix.py``).
        """
        active = np.asarray(active, dtype=bool)
        with self._prefix(self._rows_needed(active)) as n:
            r = self._r
            mask = self._to_device("active", active[:n])
            audio = self._to_device("pcm", pcm[:n])[:, None, :]
            self.mimi.set_exec_mask(mask)
            codes = self.mimi.encode(audio)
            tokens, produced = self._lm_step(codes, mask, active)
            agent = tokens[:, 1:]
            self.mimi.set_exec_mask(produced)
            pcm_out = self.mimi.decode(agent.clamp(min=0)[:, :, None])
            ints = torch.cat([tokens, produced[:, None].long(), r.guided[:, None].long(), r.model_text[:, None]],
                             dim=1)
            ints_np, pcm_np = self._to_host(ints, pcm_out[:, 0].float())
        ints_np, pcm_np = pad_rows(ints_np, self.slots, fill=0), pad_rows(pcm_np, self.slots, fill=0.0)
        return TickResult(produced=ints_np[:, -3].astype(bool), text=ints_np[:, 0].copy(),
                          agent=ints_np[:, 1:-3].copy(), pcm=pcm_np,
                          guided=ints_np[:, -2].astype(bool), model_text=ints_np[:, -1].copy())
