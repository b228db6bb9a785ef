"""The browser client's Ogg muxer/demuxer (client/js/core) against a real Ogg Opus implementation:
pages our JavaScript writes must decode in sphn (libogg + libopus) exactly like sphn's own stream."""

from __future__ import annotations

import shutil
import subprocess
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest
import sphn

ROOT = Path(__file__).resolve().parents[1]
REMUX = ROOT / "tests" / "js" / "tools" / "ogg_remux.mjs"
SPEECH = Path(__file__).resolve().parents[2] / "shared" / "audio" / "user_turn_en.wav"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def _speech(seconds: float = 3.0) -> np.ndarray:
    if SPEECH.exists():
        with wave.open(str(SPEECH)) as w:
            assert w.getframerate() == 24000
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    else:  # still a fair signal: a chirp with an envelope
        t = np.arange(int(24000 * seconds)) / 24000
        pcm = (0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t) * (1 + np.sin(3 * t)) / 2).astype(np.float32)
    n = int(24000 * seconds) // 1920 * 1920
    return pcm[:n]


def _sphn_stream(pcm: np.ndarray) -> bytes:
    writer = sphn.OpusStreamWriter(24000)
    return b"".join(writer.append_pcm(pcm[i : i + 1920]) for i in range(0, len(pcm), 1920))


def _decode(data: bytes, chunk: int | None = None) -> np.ndarray:
    reader = sphn.OpusStreamReader(24000)
    if chunk is None:
        return reader.append_bytes(data)
    parts = [reader.append_bytes(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    return np.concatenate(parts)


def _remux(data: bytes, page_duration: int = 3840) -> bytes:
    done = subprocess.run(
        [NODE, str(REMUX), str(page_duration)], input=data, capture_output=True, timeout=30, check=True
    )
    return done.stdout


_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def _ogg_crc(page: bytes) -> int:
    """Ogg CRC (poly 0x04c11db7, unreflected, init 0, no final xor) built from zlib's reflected CRC-32,
    so it shares no code with the JavaScript table implementation it checks."""
    reflected = zlib.crc32(page.translate(_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def _crc_ok(data: bytes) -> list[bool]:
    out, pos = [], 0
    while pos < len(data):
        nseg = data[pos + 26]
        end = pos + 27 + nseg + sum(data[pos + 27 : pos + 27 + nseg])
        page = bytearray(data[pos:end])
        stored = int.from_bytes(page[22:26], "little")
        page[22:26] = b"\0\0\0\0"
        out.append(_ogg_crc(bytes(page)) == stored)
        pos = end
    return out


def _pages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(header_type, granule, sequence, first 8 body bytes) per page, parsed independently of the JS."""
    out, pos = [], 0
    while pos < len(data):
        assert data[pos : pos + 4] == b"OggS"
        header_type = data[pos + 5]
        granule = int.from_bytes(data[pos + 6 : pos + 14], "little", signed=True)
        seq = int.from_bytes(data[pos + 18 : pos + 22], "little")
        nseg = data[pos + 26]
        body = pos + 27 + nseg
        size = sum(data[pos + 27 : body])
        out.append((header_type, granule, seq, data[body : body + 8]))
        pos = body + size
    return out


@pytest.mark.parametrize("page_duration", [3840, 1920])
def test_js_muxed_pages_decode_in_sphn_like_the_original(page_duration: int) -> None:
    original = _sphn_stream(_speech())
    remuxed = _remux(original, page_duration)
    reference = _decode(original)
    ours = _decode(remuxed)
    assert len(reference) > 24000 * 2
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_js_muxer_page_layout_follows_rfc7845() -> None:
    pages = _pages(_remux(_sphn_stream(_speech(1.6))))
    assert pages[0][0] == 0x02 and pages[0][3] == b"OpusHead"  # BOS page holds only OpusHead
    assert pages[1][3] == b"OpusTags" and pages[1][1] == 0
    assert [p[2] for p in pages] == list(range(len(pages)))
    granules = [p[1] for p in pages[2:]]
    assert granules == [3840 * (i + 1) for i in range(len(granules))]  # 80 ms pages at 48 kHz


def test_remuxed_stream_decodes_when_split_into_small_messages() -> None:
    remuxed = _remux(_sphn_stream(_speech(1.6)))
    whole = _decode(remuxed)
    assert whole.shape == _decode(remuxed, chunk=97).shape


def test_js_pages_carry_correct_ogg_crcs() -> None:
    original = _sphn_stream(_speech(1.6))
    assert all(_crc_ok(original)), "the independent CRC agrees with sphn's (libogg-compatible) pages"
    remuxed = bytearray(_remux(original))
    assert all(_crc_ok(bytes(remuxed)))
    remuxed[200] ^= 0x01  # and it notices a single flipped bit
    assert not all(_crc_ok(bytes(remuxed)))
