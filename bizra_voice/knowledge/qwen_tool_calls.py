"""Tool calls in a Qwen2.5 answer, found while it streams (pure).

Qwen2.5's chat template offers tools in the system turn and the model answers a call as
``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` (the markers are ordinary added tokens,
kept by ``skip_special_tokens``). Text outside the markers is the spoken answer and is passed on at once;
text that could be the start of a marker is held back until it is clear, so no marker reaches the voice.
"""

from __future__ import annotations

import json

from bizra_voice.knowledge.tools.calls import ToolCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def _held_back(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is the start of ``marker``."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class QwenToolCallParser:
    def __init__(self) -> None:
        self.calls: list[ToolCall] = []
        self._buffer = ""
        self._inside = False

    def feed(self, piece: str) -> str:
        """The answer text ``piece`` completes (markers and call bodies removed)."""
        self._buffer += piece
        out: list[str] = []
        while True:
            if self._inside:
                end = self._buffer.find(CLOSE)
                if end < 0:
                    break
                self._add(self._buffer[:end])
                self._buffer, self._inside = self._buffer[end + len(CLOSE):], False
                continue
            start = self._buffer.find(OPEN)
            if start >= 0:
                out.append(self._buffer[:start])
                self._buffer, self._inside = self._buffer[start + len(OPEN):], True
                continue
            keep = _held_back(self._buffer, OPEN)
            cut = len(self._buffer) - keep
            out.append(self._buffer[:cut])
            self._buffer = self._buffer[cut:]
            break
        return "".join(out)

    def finish(self) -> str:
        """The answer ended: what text was held back; an unterminated call is read as far as it goes."""
        rest, self._buffer = self._buffer, ""
        if self._inside:
            self._inside = False
            self._add(rest)
            return ""
        return rest

    def _add(self, body: str) -> None:
        body = body.strip()
        call_id = f"call_{len(self.calls) + 1}"
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            arguments = value.get("arguments", {})
            text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
            self.calls.append(ToolCall(call_id, value["name"], text))
        else:  # not a call the toolset can run: it answers with an error the model reads
            self.calls.append(ToolCall(call_id, "", body))
