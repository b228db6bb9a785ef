"""ModeRouter: gathers the knowledge model's health and load and applies the pure ``ModeRouterPolicy``.

Called once per session now (``decide_session``) and per user turn by hybrid mode (``decide_turn``);
both are short stateless calls, which suits Ray Serve handles. The knowledge deployment answers
``status()`` the same way for the local Qwen and for a gateway (whose health is its probe's state), so
the health, load and deadline rules are the same for both; ``knowledge_label`` names it in the reasons.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from bizra_voice.config import RouterConfig
from bizra_voice.router_policy import ModeRouterPolicy, QwenStatus, RouterPolicyConfig

log = logging.getLogger("ray.serve")


@serve.deployment(name="ModeRouter")
class ModeRouter:
    def __init__(self, config: dict, qwen=None, knowledge_label: str = "Qwen") -> None:
        self.config = RouterConfig.model_validate(config)
        self.policy = ModeRouterPolicy(RouterPolicyConfig(
            allow_hybrid=self.config.allow_hybrid, max_load=self.config.max_load,
            deadline_ms=self.config.deadline_ms, label=knowledge_label))
        self.qwen = qwen
        from bizra_voice.serve.metrics import router_decisions_counter

        self.decisions = router_decisions_counter()

    async def qwen_status(self) -> QwenStatus:
        if self.qwen is None:
            return QwenStatus(enabled=False, healthy=False, detail="not deployed")
        try:
            raw = await asyncio.wait_for(self.qwen.status.remote(), timeout=self.config.status_timeout_s)
        except asyncio.TimeoutError:
            return QwenStatus(healthy=False, detail=f"no status within {self.config.status_timeout_s:g} s")
        except Exception as exc:  # a dead or failing replica must not take sessions down with it
            return QwenStatus(healthy=False, detail=type(exc).__name__)
        return QwenStatus(enabled=bool(raw.get("enabled", True)), healthy=bool(raw.get("healthy", False)),
                          ongoing=int(raw.get("ongoing", 0)), capacity=int(raw.get("capacity", 1)),
                          latency_ms=raw.get("latency_ms"), detail=str(raw.get("detail") or ""))

    async def _status_for(self, requested: str) -> QwenStatus:
        # A standalone session never calls the knowledge model, not even for its status.
        if requested == "standalone":
            return QwenStatus(enabled=False, healthy=False, detail="not consulted (standalone)")
        return await self.qwen_status()

    async def decide_session(self, requested: str) -> dict:
        decision = self.policy.decide_session(requested, await self._status_for(requested))
        self.decisions.inc(1, tags={"scope": "session", "mode": decision.mode})
        return decision.as_event("router.session")

    async def decide_turn(self, requested: str, turn_text: str, previous_route: str | None = None,
                          typed: bool = False) -> dict:
        decision = self.policy.decide_turn(requested, turn_text, await self._status_for(requested),
                                           previous_route if previous_route in ("standalone", "hybrid") else None,
                                           typed=bool(typed))
        self.decisions.inc(1, tags={"scope": "turn", "mode": decision.mode})
        return decision.as_event("router.decision")

    async def health(self) -> dict:
        status = await self.qwen_status()
        return {"enabled": status.enabled, "healthy": status.healthy, "ongoing": status.ongoing,
                "capacity": status.capacity, "detail": status.detail}
