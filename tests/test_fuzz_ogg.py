"""Hypothesis fuzzing of the Ogg page checker and the session's Ogg/Opus decoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bizra_voice.audio import InvalidAudio, OggOpusDecoder, encode_ogg
from bizra_voice.audio.ogg_check import OggError, OggPageChecker, ogg_page

FAST = settings(max_examples=200, deadline=None)
_RNG = np.random.default_rng(3)
STREAM = b"".join(encode_ogg((0.2 * _RNG.standard_normal(24000 // 2)).astype(np.float32)))
REFERENCE = OggOpusDecoder().decode(STREAM)


def _decode_all(chunks: list[bytes]) -> np.ndarray:
    decoder = OggOpusDecoder()
    parts = [decoder.decode(c) for c in chunks]
    return np.concatenate(parts)


@FAST
@given(st.binary(max_size=4096))
def test_any_bytes_decode_or_invalid_audio(data: bytes):
    try:
        pcm = OggOpusDecoder().decode(data)
    except InvalidAudio as exc:
        assert "Ogg" in str(exc)
        return
    assert pcm.dtype == np.float32 and np.isfinite(pcm).all()


@FAST
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_decodes_like_the_whole(cuts: list[int]):
    points = sorted(set(cuts) | {0, len(STREAM)})
    chunks = [STREAM[a:b] for a, b in zip(points, points[1:], strict=False)]
    assert np.array_equal(_decode_all(chunks), REFERENCE)


@FAST
@given(st.integers(min_value=0, max_value=len(STREAM) - 1), st.integers(min_value=1, max_value=255))
def test_any_corrupted_byte_is_refused_or_held_back(position: int, xor: int):
    data = bytearray(STREAM)
    data[position] ^= xor
    decoder = OggOpusDecoder()
    try:
        pcm = decoder.decode(bytes(data))
    except InvalidAudio:
        return
    # A corrupted length field can only make a page look incomplete: less comes out, never different audio.
    assert pcm.size < REFERENCE.size
    assert np.array_equal(pcm, REFERENCE[: pcm.size])


@FAST
@given(st.binary(min_size=1, max_size=300).filter(lambda b: not b.startswith(b"OpusHead")))
def test_non_opus_streams_are_refused(packet: bytes):
    with pytest.raises(OggError, match="not Opus"):
        OggPageChecker().feed(ogg_page(packet, flags=0x02))


def test_vorbis_ogg_names_the_codec():
    with pytest.raises(InvalidAudio, match="not Opus"):
        OggOpusDecoder().decode(ogg_page(b"\x01vorbis" + bytes(23), flags=0x02))


def test_second_stream_and_foreign_pages_are_refused():
    first = STREAM[: STREAM.index(b"OggS", 4)]
    with pytest.raises(OggError, match="multiplexed"):
        OggPageChecker().feed(STREAM + first)
    with pytest.raises(OggError, match="beginning-of-stream"):
        OggPageChecker().feed(ogg_page(b"\x00" * 10, flags=0))
