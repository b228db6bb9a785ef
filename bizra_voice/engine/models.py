"""The loaded models, voices and request rules of one engine: everything but the batched state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bizra_voice.engine.api import BadSessionRequest, EngineError, SessionSpec
from bizra_voice.engine.config import EngineConfig
from bizra_voice.prompt import PromptError, resolve_persona, wrap_system_prompt


@dataclass
class LoadedModels:
    """Models, voices and the request rules: everything but the batched state."""

    bundle: Any
    library: Any
    config: EngineConfig

    @classmethod
    def load(cls, config: EngineConfig) -> LoadedModels:
        """Resolve and load the checkpoint (blocking; one clear sentence on any problem)."""
        from pathlib import Path

        from bizra_voice.engine.checkpoint import resolve_checkpoint
        from bizra_voice.engine.loading import load_bundle, pick_device, pick_dtype
        from bizra_voice.voices import VoiceCatalog, VoiceLibrary

        files = resolve_checkpoint(config.checkpoint, config.hf_token_env, config.revision, config.cache_dir)
        device = pick_device(config.device)
        bundle = load_bundle(files, device, pick_dtype(config.dtype, device), config.quantize_int8,
                             config.cpu_offload_layers)
        custom = Path(config.custom_voices_dir) if config.custom_voices_dir else None
        catalog = VoiceCatalog(files.voices_dir, custom)
        if len(catalog) == 0:
            raise EngineError(f"No voices found for {files.source}: expected voices.tgz or a voices/ folder.")
        if config.default_voice not in catalog:
            raise EngineError(f"Default voice {config.default_voice!r} is not among the installed voices "
                              f"({', '.join(v['name'] for v in catalog.listing())}).")
        return cls(bundle, VoiceLibrary(catalog, bundle.voice_mimi, bundle.lm.dim), config)

    def prepare(self, spec: SessionSpec) -> Any:
        """Validate and tokenize a request (cheap after a voice's first use; raises BadSessionRequest)."""
        from bizra_voice.engine.batched import PreparedPrompt

        try:
            persona = resolve_persona(spec.text_prompt, self.config.default_persona, self.config.max_prompt_chars)
        except PromptError as exc:
            raise BadSessionRequest(str(exc)) from exc
        voice = self.library.prepare(spec.voice or self.config.default_voice)
        tokens = [int(t) for t in self.bundle.tokenizer.encode(wrap_system_prompt(persona))]
        prompt = PreparedPrompt(voice=voice, tokens=tokens)
        room = self.bundle.context - self.config.reanchor_margin
        if prompt.length >= room:
            raise BadSessionRequest(f"The voice and text prompt take {prompt.length} frames; the model's context "
                                    f"leaves {room}: use a shorter prompt or voice.")
        return prompt
