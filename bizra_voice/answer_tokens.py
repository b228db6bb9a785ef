"""A knowledge answer, streamed as text, turned into PersonaPlex text tokens as it arrives.

Qwen's answer comes in pieces that may end mid-word; PersonaPlex is guided with SentencePiece tokens of
its own vocabulary. Encoding only complete words gives the same pieces as encoding the whole answer
(SentencePiece marks each word start with '▁'), so the first words can be spoken before the answer is
complete. Pure (needs only a SentencePiece processor).
"""

from __future__ import annotations

import re
from typing import Any

from bizra_voice import constants as C

_MARKUP = re.compile(r"[*_#`\[\]]+")


def speakable(text: str) -> str:
    """Answer text as it should be said: no markdown symbols, no system tags."""
    return _MARKUP.sub("", text.replace(C.SYSTEM_TAG, " "))


class AnswerTokenizer:
    """Cuts a streamed answer at word boundaries and encodes complete words with SentencePiece.

    Encoding word-complete chunks gives the same pieces as encoding the whole text (SentencePiece marks
    each word start with '▁'), so speaking can start before the answer is complete.
    """

    def __init__(self, sp: Any) -> None:
        self.sp = sp
        size = sp.get_piece_size()
        silent = {0, C.TEXT_PAD_ID}
        for name in ("unk_id", "bos_id", "eos_id", "pad_id"):
            value = getattr(sp, name)()
            if value >= 0:
                silent.add(value)
        self._valid = lambda t: 0 <= t < size and t not in silent
        self._pending = ""

    def _encode(self, text: str) -> list[int]:
        text = " ".join(text.split())
        return [int(t) for t in self.sp.encode(text) if self._valid(int(t))] if text else []

    def feed(self, piece: str) -> list[int]:
        """The tokens of the words ``piece`` completes (the unfinished last word waits)."""
        self._pending += speakable(piece)
        stripped = self._pending.rstrip()
        cut = max(stripped.rfind(" "), stripped.rfind("\n"))
        if cut <= 0 or not stripped[:cut].strip():
            return []
        chunk, self._pending = self._pending[:cut], self._pending[cut:]
        return self._encode(chunk)

    def flush(self) -> list[int]:
        """The tokens of whatever is left (the answer is complete)."""
        chunk, self._pending = self._pending, ""
        return self._encode(chunk)
