"""QwenKnowledge: the knowledge model of hybrid mode, a thin Ray Serve shell around transformers.

``answer(question, context)`` streams the answer text (use ``handle.options(stream=True)``); ``status()``
is what the ModeRouter reads to decide whether hybrid turns can use it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator

from ray import serve

from bizra_voice.config import QwenConfig
from bizra_voice.serve.cpu_share import yield_cpu_to_the_engine
from bizra_voice.serve.model_cache import pick_device

log = logging.getLogger("ray.serve")


def _dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, name)


@serve.deployment(name="QwenKnowledge")
class QwenKnowledge:
    def __init__(self, config: dict, model_dir: str | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = QwenConfig.model_validate(config)
        device = pick_device(self.config.device, self.config.gpu_memory_fraction)
        yield_cpu_to_the_engine(device, "QwenKnowledge")  # CPU: one thread, lower priority than the engine
        if self.config.tiny_random:
            from bizra_voice.serve.tiny_qwen import make_tiny_qwen

            # Generated on the replica's node (a shared cache dir makes it once per node), then reused.
            model_dir = str(make_tiny_qwen(model_dir or self.config.model))
        source = model_dir or self.config.model
        self.model_name = source
        self.random_weights = self.config.tiny_random
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = AutoModelForCausalLM.from_pretrained(source, torch_dtype=_dtype(self.config.dtype, device))
        self.model.to(device).eval()
        self._ongoing = 0
        self._answers = 0  # answer() calls so far (tests check that standalone sessions never call it)
        self._lock = threading.Lock()
        self._last_first_token_ms: float | None = None
        from bizra_voice.serve.metrics import latency_histogram

        self.first_token_hist = latency_histogram("bizra_qwen_first_token_ms", "Qwen: question -> first answer "
                                                  "piece (ms).")
        self.answer_hist = latency_histogram("bizra_qwen_answer_ms", "Qwen: question -> whole answer (ms).")
        log.info("QwenKnowledge ready: %s on %s%s", source, device,
                 " (tiny RANDOM weights: answers are gibberish)" if self.random_weights else "")

    async def status(self) -> dict:
        return {
            "enabled": True,
            "healthy": True,
            "ongoing": self._ongoing,
            "answers": self._answers,
            "capacity": self.config.max_ongoing_requests,
            "latency_ms": self._last_first_token_ms,
            "model": self.model_name,
            "device": self.device,
            "random_weights": self.random_weights,
        }

    def _messages(self, question: str, context: list[dict] | None, persona: str | None) -> list[dict]:
        system = self.config.system_prompt
        if persona:
            system += f" You speak as this persona: {persona}"
        messages = [{"role": "system", "content": system}]
        for turn in context or []:
            if turn.get("role") in ("user", "assistant") and isinstance(turn.get("content"), str):
                messages.append({"role": turn["role"], "content": turn["content"]})
        messages.append({"role": "user", "content": question})
        return messages

    async def answer(self, question: str, context: list[dict] | None = None,
                     persona: str | None = None) -> AsyncIterator[str]:
        """Stream the answer to ``question`` as text pieces (generation runs in a worker thread)."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        stop = threading.Event()  # set when the caller goes away (barge-in, deadline): generation stops

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                return stop.is_set()

        ids = self.tokenizer.apply_chat_template(
            self._messages(question, context, persona), add_generation_prompt=True, return_tensors="pt")
        ids = ids[:, -self.config.max_input_tokens:].to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60.0)
        kwargs = {"input_ids": ids, "attention_mask": ids.new_ones(ids.shape), "max_new_tokens":
                  self.config.max_new_tokens, "do_sample": False, "streamer": streamer,
                  "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                  "stopping_criteria": StoppingCriteriaList([_Stop()])}
        thread = threading.Thread(target=self.model.generate, kwargs=kwargs, daemon=True)
        with self._lock:
            self._ongoing += 1
            self._answers += 1
        start = time.perf_counter()
        first = True
        try:
            thread.start()
            pieces = iter(streamer)
            while True:
                piece = await asyncio.to_thread(next, pieces, None)
                if piece is None:
                    break
                if first:
                    self._last_first_token_ms = (time.perf_counter() - start) * 1000.0
                    self.first_token_hist.observe(self._last_first_token_ms)
                    first = False
                if piece:
                    yield piece
        finally:
            stop.set()
            self.answer_hist.observe((time.perf_counter() - start) * 1000.0)
            with self._lock:
                self._ongoing -= 1
