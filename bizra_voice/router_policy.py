"""ModeRouter policy: standalone (PersonaPlex alone) or hybrid (Qwen knowledge spoken by PersonaPlex).

Pure and synchronous so it can be unit-tested and reasoned about; the ``ModeRouter`` deployment only
gathers the inputs (requested mode, Qwen's health and load) and calls it. Every decision carries a
human-readable reason that the client receives in its events.

Policy (documented in the README):
- ``standalone`` requested -> standalone, always (Qwen is never called).
- ``hybrid`` requested -> hybrid while Qwen is enabled, healthy, not overloaded and answering within
  the deadline; otherwise standalone with the reason.
- ``auto`` -> like ``hybrid`` for the session; per turn, only turns that look like knowledge or
  reasoning questions go to Qwen (the rest is small talk that PersonaPlex handles with better timing),
  plus short follow-ups ("and Germany?", "why?") right after a turn that went to Qwen (session memory).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Literal

RequestedMode = Literal["standalone", "hybrid", "auto"]
Mode = Literal["standalone", "hybrid"]


@dataclass(frozen=True)
class QwenStatus:
    """What the router knows about the knowledge model when it decides."""

    enabled: bool = True
    healthy: bool = True
    ongoing: int = 0
    capacity: int = 1
    latency_ms: float | None = None  # recent time to first token, when known
    detail: str = ""

    @property
    def load(self) -> float:
        return self.ongoing / max(1, self.capacity)


@dataclass(frozen=True)
class RouterPolicyConfig:
    allow_hybrid: bool = True
    max_load: float = 1.0  # ongoing/capacity at or above which Qwen counts as overloaded
    deadline_ms: float = 1500.0  # Qwen first-token latency above which a turn stays standalone
    min_question_words: int = 3
    label: str = "Qwen"  # how reasons name the knowledge model ("gateway <model>" for a gateway)


@dataclass(frozen=True)
class Decision:
    mode: Mode
    reason: str
    requested: RequestedMode

    def as_event(self, kind: str = "router.decision") -> dict:
        return {"type": kind, **asdict(self)}


_QUESTION_START = re.compile(
    r"^(what|who|whom|whose|which|when|where|why|how|explain|define|describe|compare|calculate|compute|"
    r"summari[sz]e|list|tell me|can you tell|do you know|is it true|how many|how much)\b",
    re.IGNORECASE,
)
_SMALL_TALK = re.compile(
    r"^(hi|hello|hey|thanks|thank you|ok|okay|yes|no|yeah|sure|bye|goodbye|good (morning|evening|night))\b",
    re.IGNORECASE,
)


_FOLLOW_UP = re.compile(
    r"^(and|but|so|also|what about|how about|why|how so|tell me more|more|go on|really|then)\b", re.IGNORECASE)


def looks_like_follow_up(text: str, max_words: int = 8) -> bool:
    """A short continuation ("and Germany?", "why?", "tell me more") of the previous exchange."""
    t = text.strip()
    return 0 < len(t.split()) <= max_words and bool(_FOLLOW_UP.match(t))


def looks_like_knowledge_question(text: str, min_words: int = 3) -> bool:
    """Heuristic for ``auto``: a question or an explain/define request of some length, not small talk."""
    t = text.strip()
    words = t.split()
    if len(words) < min_words or _SMALL_TALK.match(t):
        return False
    return t.endswith("?") or bool(_QUESTION_START.match(t))


class ModeRouterPolicy:
    """Decides a session's mode at start, and a turn's route during the session."""

    def __init__(self, config: RouterPolicyConfig | None = None) -> None:
        self.config = config or RouterPolicyConfig()

    def _qwen_problem(self, qwen: QwenStatus) -> str | None:
        if not self.config.allow_hybrid:
            return "hybrid mode is disabled in the server config"
        name = f"the knowledge model ({self.config.label})"
        if not qwen.enabled:
            return f"{name} is not deployed"
        if not qwen.healthy:
            return f"{name} is unhealthy" + (f": {qwen.detail}" if qwen.detail else "")
        if qwen.load >= self.config.max_load:
            return f"{name} is at capacity ({qwen.ongoing}/{qwen.capacity} requests)"
        if qwen.latency_ms is not None and qwen.latency_ms > self.config.deadline_ms:
            return f"{name} answers in {qwen.latency_ms:.0f} ms, over the {self.config.deadline_ms:.0f} ms deadline"
        return None

    def decide_session(self, requested: RequestedMode, qwen: QwenStatus) -> Decision:
        if requested == "standalone":
            return Decision("standalone", "standalone was requested", requested)
        problem = self._qwen_problem(qwen)
        if problem is not None:
            return Decision("standalone", f"{requested} was requested but {problem}", requested)
        if requested == "hybrid":
            return Decision("hybrid", "hybrid was requested and the knowledge model is available", requested)
        return Decision("hybrid", "auto: knowledge model available; knowledge questions will go to it",
                        requested)

    def decide_turn(self, requested: RequestedMode, turn_text: str, qwen: QwenStatus,
                    previous_route: Mode | None = None, typed: bool = False) -> Decision:
        """``previous_route``: the route of the user's previous turn (from the session's memory).
        ``typed``: PersonaPlex only hears audio, so typed text routed standalone would never reach anyone;
        in auto mode it always goes to the knowledge model."""
        if requested == "standalone":
            return Decision("standalone", "standalone session: the knowledge model is never called", requested)
        problem = self._qwen_problem(qwen)
        if problem is not None:
            return Decision("standalone", f"this turn stays standalone: {problem}", requested)
        if requested == "hybrid":
            return Decision("hybrid", "hybrid session: the turn goes to the knowledge model", requested)
        if typed:
            return Decision("hybrid", "auto: typed text reaches the assistant only through the knowledge model",
                            requested)
        if looks_like_knowledge_question(turn_text, self.config.min_question_words):
            return Decision("hybrid", "auto: the turn looks like a knowledge question", requested)
        if previous_route == "hybrid" and looks_like_follow_up(turn_text):
            return Decision("hybrid", "auto: a follow-up to the previous knowledge answer", requested)
        return Decision("standalone", "auto: the turn looks like conversation, not a knowledge question",
                        requested)
