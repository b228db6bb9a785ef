"""Hypothesis fuzzing of the wire-protocol parser: any bytes give a Message or a ProtocolError, never more."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bizra_voice import protocol as P

CLOSE_CODES = {P.CloseCode.BAD_REQUEST, P.CloseCode.TOO_BIG, P.CloseCode.INVALID_PAYLOAD}
FAST = settings(max_examples=300, deadline=None)


@FAST
@given(st.binary(max_size=2048), st.integers(min_value=1, max_value=4096))
def test_decode_any_bytes(data: bytes, limit: int):
    try:
        msg = P.decode(data, limit)
    except P.ProtocolError as exc:
        assert exc.close_code in CLOSE_CODES and str(exc)
        assert not data or len(data) > limit or data[0] not in {k.value for k in P.Kind}
        if data and len(data) > limit:
            assert exc.close_code == P.CloseCode.TOO_BIG
        return
    assert 0 < len(data) <= limit
    assert msg.kind == data[0] and msg.payload == data[1:]
    for parse in (msg.text, msg.json):
        try:
            parse()
        except P.ProtocolError as exc:
            assert exc.close_code == P.CloseCode.INVALID_PAYLOAD


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@FAST
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_metadata_round_trip(event: dict):
    msg = P.decode(P.metadata(event))
    assert msg.kind == P.Kind.METADATA and msg.json() == json.loads(json.dumps(event))


@FAST
@given(st.text(max_size=200))
def test_text_and_error_round_trip(piece: str):
    assert P.decode(P.text(piece)).text() == piece
    assert P.decode(P.error(piece)).text() == piece


def test_deeply_nested_json_is_a_protocol_error():
    msg = P.decode(b"\x04" + b"[" * 100_000, 1 << 20)
    try:
        msg.json()
    except P.ProtocolError as exc:
        assert exc.close_code == P.CloseCode.INVALID_PAYLOAD
    else:
        raise AssertionError("deep nesting was accepted")
