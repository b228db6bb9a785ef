"""The ``local`` knowledge backend: a causal LM with a chat template, run in-process with transformers.

Qwen2.5-1.5B-Instruct on the GPU profiles, the tiny random Qwen2 on the CPU profile. Generation runs in
a worker thread (``model.generate`` with a ``TextIteratorStreamer``) and stops as soon as the caller goes
away (barge-in, deadline, a newer turn). With tools, they are rendered by the model's chat template
(Qwen2.5's offers them in the system turn) and its ``<tool_call>`` blocks are read back as ``ToolCall``s
(``qwen_tool_calls.py``); a template that knows no tools ignores them, and the model then just answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

from bizra_voice.knowledge.config import QwenConfig
from bizra_voice.knowledge.qwen_tool_calls import QwenToolCallParser
from bizra_voice.knowledge.tools.calls import ToolCall


def _dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, name)


def for_chat_template(message: dict[str, Any]) -> dict[str, Any]:
    """Chat Completions messages as Qwen2.5's template reads them: a call's arguments as an object."""
    if message.get("role") != "assistant" or not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        function = dict(call.get("function", {}))
        with contextlib.suppress(ValueError):  # otherwise as written; the template prints it as text
            function["arguments"] = json.loads(function.get("arguments") or "{}")
        calls.append({**call, "function": function})
    return {**message, "content": message.get("content") or "", "tool_calls": calls}


class LocalModel:
    def __init__(self, config: QwenConfig, source: str, device: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = AutoModelForCausalLM.from_pretrained(source, torch_dtype=_dtype(config.dtype, device))
        self.model.to(device).eval()

    healthy = True  # in-process: the replica's own health is Serve's business

    async def stream(self, messages: list[dict], tools: list[dict],
                     tool_choice: str | dict | None = None) -> AsyncIterator[str | ToolCall]:
        """``tool_choice``: a chat template cannot force a call, so only ``auto`` reaches here (a named
        function is offered alone; ``required`` is refused before the session asks - realtime layer)."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        stop = threading.Event()  # set when the caller goes away: generation stops

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                return stop.is_set()

        ids = self.tokenizer.apply_chat_template([for_chat_template(m) for m in messages], tools=tools or None,
                                                 add_generation_prompt=True, return_tensors="pt")
        ids = ids[:, -self.config.max_input_tokens:].to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60.0)
        kwargs = {"input_ids": ids, "attention_mask": ids.new_ones(ids.shape), "max_new_tokens":
                  self.config.max_new_tokens, "do_sample": False, "streamer": streamer,
                  "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                  "stopping_criteria": StoppingCriteriaList([_Stop()])}
        thread = threading.Thread(target=self.model.generate, kwargs=kwargs, daemon=True)
        parser = QwenToolCallParser() if tools else None
        try:
            thread.start()
            pieces = iter(streamer)
            while True:
                piece = await asyncio.to_thread(next, pieces, None)
                if piece is None:
                    break
                text = parser.feed(piece) if parser is not None else piece
                if text:
                    yield text
            if parser is not None:
                rest = parser.finish()
                if rest:
                    yield rest
                for call in parser.calls:
                    yield call
        finally:
            stop.set()
