"""The moshi/PersonaPlex wire protocol codec (pure)."""

from __future__ import annotations

import pytest

from bizra_voice import protocol as P


def test_kind_bytes_match_moshi():
    assert P.handshake() == b"\x00"
    assert P.audio(b"OggS..") == b"\x01OggS.."
    assert P.text(" héllo") == b"\x02" + " héllo".encode()
    assert P.error("at capacity") == b"\x05at capacity"
    assert P.ping() == b"\x06"
    assert [k.value for k in P.Kind] == [0, 1, 2, 3, 4, 5, 6]


def test_round_trip_and_json_metadata():
    event = {"type": "session.started", "voice": "NATM1", "reason": "مرحبا"}
    msg = P.decode(P.metadata(event))
    assert msg.kind is P.Kind.METADATA and msg.json() == event
    assert P.decode(P.text("▁word")).text() == "▁word"
    assert P.decode(b"\x01" + b"\xff\x00").payload == b"\xff\x00"


@pytest.mark.parametrize("raw, needle", [
    (b"", "empty"),
    (b"\x09abc", "unknown message kind 0x09"),
    (b"\x01" + b"x" * (P.MAX_MESSAGE_BYTES + 1), "exceeds"),
])
def test_decode_rejects(raw, needle):
    with pytest.raises(P.ProtocolError, match=needle):
        P.decode(raw)


def test_bad_text_and_json_are_protocol_errors():
    with pytest.raises(P.ProtocolError, match="UTF-8"):
        P.decode(b"\x02\xff\xfe").text()
    with pytest.raises(P.ProtocolError, match="JSON"):
        P.decode(b"\x04{not json").json()
    with pytest.raises(P.ProtocolError, match="object"):
        P.decode(b"\x04[1,2]").json()


def test_close_codes():
    assert (P.CloseCode.BAD_REQUEST, P.CloseCode.INTERNAL, P.CloseCode.AT_CAPACITY) == (1008, 1011, 1013)
