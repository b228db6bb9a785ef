"""ModeRouter policy: standalone vs hybrid, with reasons (pure)."""

from __future__ import annotations

import pytest

from bizra_voice.router_policy import (
    ModeRouterPolicy,
    QwenStatus,
    RouterPolicyConfig,
    looks_like_knowledge_question,
)

OK = QwenStatus()


def test_standalone_is_always_standalone():
    policy = ModeRouterPolicy()
    for status in (OK, QwenStatus(healthy=False)):
        d = policy.decide_session("standalone", status)
        assert d.mode == "standalone" and d.reason == "standalone was requested"
        assert policy.decide_turn("standalone", "What is the capital of France?", status).mode == "standalone"


@pytest.mark.parametrize("status, needle", [
    (QwenStatus(enabled=False), "not deployed"),
    (QwenStatus(healthy=False, detail="TimeoutError"), "unhealthy: TimeoutError"),
    (QwenStatus(ongoing=4, capacity=4), "at capacity (4/4"),
    (QwenStatus(latency_ms=2500.0), "2500 ms, over the 1500 ms deadline"),
])
def test_hybrid_falls_back_with_the_reason(status, needle):
    policy = ModeRouterPolicy()
    for requested in ("hybrid", "auto"):
        d = policy.decide_session(requested, status)
        assert d.mode == "standalone" and needle in d.reason and d.requested == requested
        t = policy.decide_turn(requested, "Explain how tides work please", status)
        assert t.mode == "standalone" and needle in t.reason


def test_hybrid_disabled_by_config():
    d = ModeRouterPolicy(RouterPolicyConfig(allow_hybrid=False)).decide_session("hybrid", OK)
    assert d.mode == "standalone" and "disabled" in d.reason


def test_available_qwen():
    policy = ModeRouterPolicy()
    assert policy.decide_session("hybrid", OK).mode == "hybrid"
    assert policy.decide_session("auto", OK).mode == "hybrid"
    assert policy.decide_turn("hybrid", "hi", OK).mode == "hybrid"
    assert policy.decide_turn("auto", "How far away is the moon?", OK).mode == "hybrid"
    chat = policy.decide_turn("auto", "hello there my friend", OK)
    assert chat.mode == "standalone" and "conversation" in chat.reason
    typed = policy.decide_turn("auto", "hello there my friend", OK, typed=True)  # else nobody would hear it
    assert typed.mode == "hybrid" and "typed" in typed.reason
    assert policy.decide_turn("standalone", "hello", OK, typed=True).mode == "standalone"
    assert policy.decide_turn("auto", "hello", QwenStatus(healthy=False), typed=True).mode == "standalone"
    event = policy.decide_turn("auto", "What is the boiling point of water?", OK).as_event()
    assert event["type"] == "router.decision" and event["mode"] == "hybrid" and event["requested"] == "auto"


@pytest.mark.parametrize("text, expected", [
    ("What is the capital of France?", True),
    ("explain quantum tunnelling to me", True),
    ("is the earth flat or round?", True),
    ("how many legs does a spider have", True),
    ("ok", False),
    ("thanks, that was great", False),
    ("hello?", False),
    ("I went to the market today", False),
])
def test_knowledge_question_heuristic(text, expected):
    assert looks_like_knowledge_question(text) is expected
