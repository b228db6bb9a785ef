"""Per-session conversation memory (pure)."""

from bizra_voice.memory import ConversationMemory


def test_turns_context_and_assistant_pieces():
    m = ConversationMemory()
    q1 = m.add_user("What is   the capital of France?", "typed")
    m.set_route(q1, "hybrid")
    for piece in (" The", " capital", " is", " Paris."):
        m.add_assistant_text(piece)
    q2 = m.add_user("and Germany?", "speech")
    assert [t.role for t in m.turns] == ["user", "assistant", "user"]
    assert m.turns[0].text == "What is the capital of France?"
    assert m.turns[1].text == "The capital is Paris."
    assert m.last_route == "hybrid" and q2.route is None
    assert m.context() == [{"role": "user", "content": "What is the capital of France?"},
                           {"role": "assistant", "content": "The capital is Paris."}]
    assert m.context(exclude_last_user=False)[-1] == {"role": "user", "content": "and Germany?"}
    assert m.context(max_turns=1) == [{"role": "assistant", "content": "The capital is Paris."}]


def test_bounds():
    m = ConversationMemory(max_turns=4, max_chars=50)
    for i in range(10):
        m.add_user(f"question {i}")
    assert [t.text for t in m.turns] == [f"question {i}" for i in range(6, 10)]
    m.add_user("x" * 45)
    assert sum(len(t.text) for t in m.turns) <= 50 and m.turns[-1].text == "x" * 45
    assert ConversationMemory().last_route is None
    m2 = ConversationMemory()
    m2.close_assistant()
    assert m2.turns == []  # nothing said, nothing stored
