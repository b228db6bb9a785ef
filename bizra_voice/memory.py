"""Per-session conversation memory for hybrid mode (pure).

Holds the user's turns (transcribed or typed) and what the assistant said (the 0x02 text stream, whether
PersonaPlex's own words or a guided answer), bounded by turn count and characters. It feeds the router
(``last_route``: a follow-up to a knowledge answer stays with the knowledge model) and Qwen (``context``:
the recent turns as chat messages).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    text: str
    source: str = ""  # user: "speech" | "typed"; assistant: "model" | "knowledge"
    route: str | None = None  # user turns: the mode the router chose for it


@dataclass
class ConversationMemory:
    max_turns: int = 16
    max_chars: int = 4000
    turns: list[Turn] = field(default_factory=list)
    _assistant: list[str] = field(default_factory=list)

    def add_user(self, text: str, source: str = "speech") -> Turn:
        """A user turn closes the assistant's running turn and starts a new exchange."""
        self.close_assistant()
        turn = Turn("user", " ".join(text.split()), source)
        self.turns.append(turn)
        self._trim()
        return turn

    def set_route(self, turn: Turn, route: str) -> None:
        turn.route = route

    def add_assistant_text(self, piece: str) -> None:
        """One piece of the assistant's text stream (as sent on 0x02)."""
        self._assistant.append(piece)

    def close_assistant(self, source: str = "model") -> None:
        text = " ".join("".join(self._assistant).split())
        self._assistant = []
        if text:
            self.turns.append(Turn("assistant", text, source))
            self._trim()

    def _trim(self) -> None:
        while len(self.turns) > self.max_turns:
            self.turns.pop(0)
        while len(self.turns) > 1 and sum(len(t.text) for t in self.turns) > self.max_chars:
            self.turns.pop(0)

    @property
    def last_route(self) -> str | None:
        """The route of the user turn before the newest one (None if there is none)."""
        users = [t for t in self.turns if t.role == "user"]
        return users[-2].route if len(users) >= 2 else None

    def context(self, max_turns: int = 8, exclude_last_user: bool = True) -> list[dict[str, str]]:
        """Recent turns as chat messages (oldest first), without the question being asked now."""
        turns = list(self.turns)
        if exclude_last_user and turns and turns[-1].role == "user":
            turns = turns[:-1]
        return [{"role": t.role, "content": t.text} for t in turns[-max_turns:] if t.text]
