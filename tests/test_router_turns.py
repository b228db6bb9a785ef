"""Per-turn routing with the session's memory (pure policy): follow-ups to a knowledge answer."""

from bizra_voice.router_policy import ModeRouterPolicy, QwenStatus, looks_like_follow_up

OK = QwenStatus()


def test_follow_up_detection():
    for text in ("and Germany?", "why?", "What about Spain", "tell me more", "how so"):
        assert looks_like_follow_up(text), text
    for text in ("", "hello there", "and " + "word " * 10):
        assert not looks_like_follow_up(text), text


def test_auto_keeps_follow_ups_with_the_knowledge_model():
    policy = ModeRouterPolicy()
    d = policy.decide_turn("auto", "and Germany?", OK, previous_route="hybrid")
    assert d.mode == "hybrid" and "follow-up" in d.reason
    d = policy.decide_turn("auto", "and Germany?", OK, previous_route="standalone")
    assert d.mode == "standalone" and "conversation" in d.reason
    assert policy.decide_turn("auto", "and Germany?", OK).mode == "standalone"
    # a follow-up never overrides an unavailable model or a standalone session
    d = policy.decide_turn("auto", "and Germany?", QwenStatus(healthy=False), previous_route="hybrid")
    assert d.mode == "standalone" and "unhealthy" in d.reason
    d = policy.decide_turn("standalone", "and Germany?", OK, previous_route="hybrid")
    assert d.mode == "standalone" and "never called" in d.reason
