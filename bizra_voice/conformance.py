"""Run a PersonaPlex conformance kit (golden vectors of the reference implementation) against our engine.

Everything comes from the kit: ``model/config.json`` (LM kwargs, Mimi config, constants), ``cases/index.json``
(prompts, voices, files) and the tensors. Token ids must match exactly; logits and PCM within tolerance.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LOGIT_TOLERANCE = 1e-4
PCM_TOLERANCE = 1e-4


@dataclass
class CaseResult:
    name: str
    passed: bool
    detail: str


@dataclass
class Kit:
    root: Path
    index: dict[str, Any]
    config: dict[str, Any]

    @classmethod
    def open(cls, root: Path) -> Kit:
        root = Path(root)
        return cls(root, json.loads((root / "cases" / "index.json").read_text()),
                   json.loads((root / "model" / "config.json").read_text()))

    def tensors(self, case: dict[str, Any]) -> dict[str, np.ndarray]:
        from safetensors.numpy import load_file

        return load_file(str(self.root / case["file"]))


class _Harness:
    """Loads the kit's model once (float32, CPU unless asked) and runs the cases."""

    def __init__(self, kit: Kit, device: str = "cpu") -> None:
        import torch

        from bizra_voice.engine.checkpoint import resolve_local
        from bizra_voice.engine.loading import load_bundle

        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        self.kit = kit
        self.files = resolve_local(kit.root / "model")
        self.device = torch.device(device)
        self.bundle = load_bundle(self.files, self.device, torch.float32)
        self.voices_dir = kit.root / "voices"

    def engine(self, slots: int) -> Any:
        from bizra_voice.engine.batched import BatchedEngine

        return BatchedEngine(self.bundle, slots)

    def prompt(self, case: dict[str, Any]) -> Any:
        from bizra_voice.engine.batched import PreparedPrompt
        from bizra_voice.prompt import wrap_system_prompt
        from bizra_voice.voices import VoiceCatalog, VoiceLibrary

        library = VoiceLibrary(VoiceCatalog(self.voices_dir), self.bundle.voice_mimi, self.bundle.lm.dim)
        voice = library.prepare(Path(case["voice"]).name)
        tokens = self.bundle.tokenizer.encode(wrap_system_prompt(case["text_prompt"]))
        return PreparedPrompt(voice=voice, tokens=list(tokens))


def _greedy():
    from bizra_voice.engine.api import SamplingParams

    return SamplingParams(greedy=True)


def _compare_tokens(name: str, want_text: np.ndarray, want_agent: np.ndarray, got_text: list[int],
                    got_agent: list[np.ndarray], margins: np.ndarray | None) -> CaseResult:
    got_t = np.asarray(got_text)
    got_a = np.stack(got_agent)
    bad = [t for t in range(len(want_text)) if got_t[t] != want_text[t] or not np.array_equal(got_a[t], want_agent[t])]
    if not bad:
        return CaseResult(name, True, f"{len(want_text)} frames, text+8 codebooks exact")
    t = bad[0]
    margin = "" if margins is None else f", reference margin there {float(margins[t].min()):.2e}"
    return CaseResult(name, False, f"first mismatch at frame {t}: text {got_t[t]} vs {want_text[t]}, "
                                   f"agent {got_a[t].tolist()} vs {want_agent[t].tolist()}{margin}")


def case_logits(h: _Harness, case: dict[str, Any]) -> CaseResult:
    import torch

    from bizra_voice.engine.loading import build_lm

    data = h.kit.tensors(case)
    codes = torch.from_numpy(data["codes"]).to(h.device)
    details = []
    ok = True
    for dep_q in (16, 8):
        lm = build_lm(h.files, h.device, torch.float32, dep_q=dep_q) if dep_q != h.bundle.lm.dep_q else h.bundle.lm
        with torch.no_grad():
            out = lm(codes)
        want_a = data["audio_logits"][:, :dep_q]
        got_a = out.logits.float().cpu().numpy()
        got_t = out.text_logits.float().cpu().numpy()
        nan_ok = np.array_equal(np.isnan(got_a), np.isnan(want_a)) and np.array_equal(
            np.isnan(got_t), np.isnan(data["text_logits"]))
        mask_ok = np.array_equal(out.mask.cpu().numpy(), data["audio_mask"][:, :dep_q])
        diff = max(float(np.nanmax(np.abs(got_a - want_a))), float(np.nanmax(np.abs(got_t - data["text_logits"]))))
        case_ok = nan_ok and mask_ok and diff <= LOGIT_TOLERANCE
        ok &= case_ok
        details.append(f"dep_q={dep_q} max|diff| {diff:.1e}{'' if nan_ok and mask_ok else ' NaN/mask pattern differs'}")
    return CaseResult("logits", ok, "; ".join(details))


def case_prompted(h: _Harness, name: str, case: dict[str, Any]) -> CaseResult:
    data = h.kit.tensors(case)
    prompt = h.prompt(case)
    if prompt.tokens != [int(x) for x in data["prompt_tokens"]]:
        return CaseResult(name, False, f"prompt tokens differ: {prompt.tokens[:12]}... vs "
                                       f"{data['prompt_tokens'][:12].tolist()}...")
    if prompt.length != case["P"]:
        return CaseResult(name, False, f"prompt length P={prompt.length}, reference {case['P']}")
    extra = []
    if "voice_codes" in data:
        if not np.array_equal(prompt.voice.codes, data["voice_codes"]):
            return CaseResult(name, False, "Mimi codes of the WAV voice differ from the reference")
        from bizra_voice.voices import VoiceCatalog, read_voice_wav

        pcm = read_voice_wav(VoiceCatalog(h.voices_dir).resolve(Path(case["voice"]).name).path)
        pcm_diff = float(np.max(np.abs(pcm - data["voice_pcm_normalized"])))
        if pcm_diff > PCM_TOLERANCE:
            return CaseResult(name, False, f"-24 LUFS voice PCM differs by {pcm_diff:.1e}")
        extra.append(f"voice codes exact, LUFS PCM diff {pcm_diff:.1e}")
    engine = h.engine(1)
    engine.start_slot(0, prompt, _greedy())
    texts, agents = [], []
    active = np.ones(1, dtype=bool)
    for t in range(data["user_codes"].shape[1]):
        tokens, produced = engine.step_codes(data["user_codes"][None, :, t].astype(np.int64), active)
        texts.append(int(tokens[0, 0]))
        agents.append(tokens[0, 1:])
    engine.close()
    result = _compare_tokens(name, data["text"], data["agent"], texts, agents, data.get("margins"))
    if extra and result.passed:
        result.detail += "; " + "; ".join(extra)
    return result


def case_audio_roundtrip(h: _Harness, case: dict[str, Any]) -> CaseResult:
    import torch

    from bizra_voice.constants import FRAME_SIZE

    data = h.kit.tensors(case)
    mimi = h.bundle.voice_mimi
    pcm = torch.from_numpy(data["pcm_in"]).to(h.device)
    frames = pcm.shape[-1] // FRAME_SIZE
    with torch.no_grad():
        with mimi.streaming(1):
            codes = torch.cat([mimi.encode(pcm[:, :, i * FRAME_SIZE:(i + 1) * FRAME_SIZE]) for i in range(frames)], -1)
        with mimi.streaming(1):
            out = torch.cat([mimi.decode(codes[:, :, i:i + 1]) for i in range(frames)], -1)
    codes_np = codes.cpu().numpy()
    if not np.array_equal(codes_np, data["codes"]):
        return CaseResult("audio_roundtrip", False, "Mimi codes differ")
    diff = float(np.max(np.abs(out.cpu().numpy() - data["pcm_out"])))
    return CaseResult("audio_roundtrip", diff <= PCM_TOLERANCE, f"codes exact, PCM max|diff| {diff:.1e}")


def case_batch2(h: _Harness, case: dict[str, Any], join_after: int = 5) -> CaseResult:
    """A real batch of two: slot 1 prefills its whole prompt after slot 0 has run ``join_after`` frames."""
    data = h.kit.tensors(case)
    slots = [{**case[key], "data": {k.split(".", 1)[1]: v for k, v in data.items() if k.startswith(key + ".")}}
             for key in ("slot0", "slot1")]
    engine = h.engine(2)
    prompts = [h.prompt(s) for s in slots]
    engine.start_slot(0, prompts[0], _greedy())
    n = slots[0]["data"]["user_codes"].shape[1]
    frame = [0, 0]
    got: list[tuple[list[int], list[np.ndarray]]] = [([], []), ([], [])]
    started = [True, False]
    while frame[0] < n or frame[1] < n:
        if not started[1] and frame[0] >= join_after:
            engine.start_slot(1, prompts[1], _greedy())
            started[1] = True
        active = np.array([started[i] and frame[i] < n for i in range(2)])
        user = np.zeros((2, 8), dtype=np.int64)
        for i in range(2):
            if active[i]:
                user[i] = slots[i]["data"]["user_codes"][:, frame[i]]
        tokens, _ = engine.step_codes(user, active)
        for i in range(2):
            if active[i]:
                got[i][0].append(int(tokens[i, 0]))
                got[i][1].append(tokens[i, 1:])
                frame[i] += 1
    engine.close()
    results = [_compare_tokens(f"slot{i}", s["data"]["text"], s["data"]["agent"], got[i][0], got[i][1],
                               s["data"].get("margins")) for i, s in enumerate(slots)]
    ok = all(r.passed for r in results)
    return CaseResult("batch2", ok, f"B=2, slot1 joins after {join_after} frames: " +
                      "; ".join(f"{r.name}: {r.detail}" for r in results))


def case_free_run(h: _Harness, case: dict[str, Any]) -> CaseResult:
    from bizra_voice.engine.batched import PreparedPrompt

    data = h.kit.tensors(case)
    engine = h.engine(1)
    engine.start_slot(0, PreparedPrompt(voice=None, tokens=[]), _greedy())
    by_frame: dict[int, np.ndarray] = {}
    for t in range(data["user_codes"].shape[1]):
        tokens, produced = engine.step_codes(data["user_codes"][None, :, t].astype(np.int64), np.ones(1, bool))
        if produced[0]:
            by_frame[t] = tokens[0]
    engine.close()
    frames = [int(f) for f in data["frame_index"]]
    missing = [f for f in frames if f not in by_frame]
    if missing:
        return CaseResult("free_run", False, f"no output for frames {missing[:5]}")
    return _compare_tokens("free_run", data["text"], data["agent"], [int(by_frame[f][0]) for f in frames],
                           [by_frame[f][1:] for f in frames], None)


def run_kit(root: Path, device: str = "cpu", log: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    kit = Kit.open(root)
    harness = _Harness(kit, device)
    results = []
    for name, case in kit.index["cases"].items():
        if name == "logits":
            result = case_logits(harness, case)
        elif name == "audio_roundtrip":
            result = case_audio_roundtrip(harness, case)
        elif name == "batch2":
            result = case_batch2(harness, case)
        elif name == "free_run":
            result = case_free_run(harness, case)
        elif "voice" in case and "text_prompt" in case:
            result = case_prompted(harness, name, case)
        else:
            result = CaseResult(name, False, "unknown case type in index.json")
        results.append(result)
        if log:
            log(result)
    return results


def format_table(results: list[CaseResult]) -> str:
    width = max(len(r.name) for r in results) if results else 4
    lines = [f"{'case'.ljust(width)}  result  detail"]
    lines += [f"{r.name.ljust(width)}  {'PASS' if r.passed else 'FAIL'}    {r.detail}" for r in results]
    passed = sum(r.passed for r in results)
    lines.append(f"{passed}/{len(results)} cases passed")
    return "\n".join(lines)


__all__ = ["CaseResult", "format_table", "run_kit"]
