"""Hypothesis fuzzing of the Ogg page checker and the session's Ogg/Opus decoder: strict where it matters
(non-Ogg, corrupt, non-Opus, multiplexed), tolerant where sphn is (stray pages, chained streams)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bizra_voice.audio import InvalidAudio, OggOpusDecoder, encode_ogg
from bizra_voice.audio.ogg_check import (
    MAX_STRAY_PAGES,
    OggError,
    OggPageChecker,
    ogg_crc,
    ogg_page,
    split_pages,
)

FAST = settings(max_examples=200, deadline=None)
_RNG = np.random.default_rng(3)
STREAM = b"".join(encode_ogg((0.2 * _RNG.standard_normal(24000 // 2)).astype(np.float32)))
REFERENCE = OggOpusDecoder().decode(STREAM)
PAGES = split_pages(STREAM)
# A second, different signal: a reconnecting client's next stream (sphn's writer always uses serial 42).
OTHER = b"".join(encode_ogg((0.3 * np.sin(np.arange(12000) * 2 * np.pi * 500 / 24000)).astype(np.float32)))
OTHER_REFERENCE = OggOpusDecoder().decode(OTHER)


def _rewrite(page: bytes, *, flags: int | None = None, serial: int | None = None) -> bytes:
    """The page with another header flag byte or serial number, its CRC recomputed."""
    out = bytearray(page)
    if flags is not None:
        out[5] = flags
    if serial is not None:
        out[14:18] = serial.to_bytes(4, "little")
    out[22:26] = bytes(4)
    out[22:26] = ogg_crc(bytes(out)).to_bytes(4, "little")
    return bytes(out)


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


@FAST
@given(st.integers(min_value=0, max_value=len(PAGES) - 3), st.integers(min_value=1, max_value=len(PAGES)),
       st.lists(st.integers(min_value=0, max_value=len(OTHER)), max_size=6))
def test_stray_pages_before_the_first_stream_are_dropped(first: int, count: int, cuts: list[int]):
    """A reconnecting client's stale mid-stream pages (no BOS page before them) are dropped, counted, and
    the stream that follows decodes exactly as if sent alone, however the bytes are split."""
    stray = PAGES[2 + first:][:count]
    data = b"".join(stray) + OTHER
    offset = sum(map(len, stray))
    points = sorted({0, len(data)} | {offset + c for c in cuts})
    decoder = OggOpusDecoder()
    pcm = np.concatenate([decoder.decode(data[a:b]) for a, b in zip(points, points[1:], strict=False)])
    assert np.array_equal(pcm, OTHER_REFERENCE)
    assert decoder.pages_dropped == len(stray) and decoder.bytes_dropped == offset
    assert decoder.streams_chained == 0


@FAST
@given(st.booleans(), st.booleans(), st.lists(st.integers(min_value=0, max_value=len(STREAM) + len(OTHER)),
                                              max_size=8))
def test_a_second_bos_page_starts_a_chained_stream(eos: bool, new_serial: bool, cuts: list[int]):
    """A new BOS page, after an EOS page or without one, starts a new logical stream: the Opus decoder is
    reset there, so each stream decodes exactly like a fresh decoder's (sphn's one shared decoder differs
    for the first ~5 ms of the second stream)."""
    first = PAGES[:-1] + [_rewrite(PAGES[-1], flags=0x04)] if eos else PAGES
    second = [_rewrite(p, serial=7) for p in split_pages(OTHER)] if new_serial else split_pages(OTHER)
    data = b"".join(first + second)
    points = sorted(set(cuts) | {0, len(data)})
    decoder = OggOpusDecoder()
    pcm = np.concatenate([decoder.decode(data[a:b]) for a, b in zip(points, points[1:], strict=False)])
    assert np.array_equal(pcm[: REFERENCE.size], REFERENCE)
    assert np.array_equal(pcm[REFERENCE.size:], OTHER_REFERENCE)
    assert decoder.streams_chained == 1 and decoder.pages_dropped == 0


def test_pages_after_an_eos_page_are_strays_until_the_next_bos():
    checker = OggPageChecker()
    first = PAGES[:5] + [_rewrite(PAGES[5], flags=0x04)]
    out = checker.feed(b"".join(first + PAGES[6:9]) + OTHER)
    assert out == b"".join(first) + OTHER
    assert checker.pages_dropped == 3 and checker.streams == 2 and checker.streams_chained == 1


def test_interleaved_logical_streams_are_refused():
    """True multiplexing (RFC 3533 grouping: all BOS pages first, then pages of both serials interleaved)
    is refused at the first page of the stream that is no longer current; sphn would mix both signals."""
    other = [_rewrite(p, serial=7) for p in split_pages(OTHER)]
    grouped = [PAGES[0], other[0]] + [p for pair in zip(PAGES[1:], other[1:], strict=False) for p in pair]
    with pytest.raises(OggError, match="another logical stream"):
        OggPageChecker().feed(b"".join(grouped))
    foreign_inside = PAGES[:6] + [_rewrite(PAGES[6], serial=7)] + PAGES[7:]
    with pytest.raises(InvalidAudio, match="multiplexed"):
        OggOpusDecoder().decode(b"".join(foreign_inside))


def test_stray_pages_are_bounded_with_a_clear_error():
    """A client cannot stream pages that belong to no stream forever: past the bound (in pages or bytes,
    counted in a row) the audio is refused; a stream's pages reset the count."""
    stray = ogg_page(b"\x00" * 10, flags=0)
    checker = OggPageChecker()
    assert checker.feed(stray * MAX_STRAY_PAGES) == b""
    assert checker.pages_dropped == MAX_STRAY_PAGES
    with pytest.raises(OggError, match=f"{MAX_STRAY_PAGES + 1} Ogg pages .* outside any logical stream"):
        checker.feed(stray)
    small = OggPageChecker(max_stray_pages=3, max_stray_bytes=10_000)
    small.feed(stray * 3 + _rewrite(PAGES[0], flags=0x06) + stray * 3)  # a stream's page resets the count
    assert small.streams == 1 and small.pages_dropped == 6
    with pytest.raises(OggError, match="4 Ogg pages"):
        small.feed(stray)
    by_bytes = OggPageChecker(max_stray_pages=1000, max_stray_bytes=len(stray) * 2)
    with pytest.raises(OggError, match="3 Ogg pages"):
        by_bytes.feed(stray * 3)


def test_strict_checks_still_apply_to_stray_and_chained_pages():
    """Tolerance is only about stream boundaries: a stray page with a bad CRC, non-Ogg bytes after a
    stream, and a chained stream that is not Opus are all still refused."""
    corrupt = bytearray(PAGES[5])
    corrupt[-1] ^= 0x40
    with pytest.raises(InvalidAudio, match="checksum"):
        OggOpusDecoder().decode(bytes(corrupt) + STREAM)
    with pytest.raises(InvalidAudio, match="not Ogg pages"):
        OggOpusDecoder().decode(STREAM + b"definitely not an Ogg page")
    with pytest.raises(InvalidAudio, match="not Opus"):
        OggOpusDecoder().decode(STREAM + ogg_page(b"\x01vorbis" + bytes(23), serial=42, flags=0x02))
    with pytest.raises(OggError, match="cannot continue a packet"):
        OggPageChecker().feed(STREAM + _rewrite(PAGES[0], flags=0x03))
