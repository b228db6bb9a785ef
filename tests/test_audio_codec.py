"""Per-session Ogg/Opus codec and 80 ms framing (pure of Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from bizra_voice.audio import (
    FrameBuffer,
    InvalidAudio,
    OggOpusDecoder,
    OggOpusEncoder,
    decode_ogg,
    encode_ogg,
)
from bizra_voice.audio.framing import split_frames
from bizra_voice.constants import FRAME_SIZE, SAMPLE_RATE


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_frame_buffer_any_chunking():
    pcm = np.arange(5 * FRAME_SIZE + 100, dtype=np.float32)
    buf = FrameBuffer()
    frames = []
    rng = np.random.default_rng(0)
    pos = 0
    while pos < pcm.size:
        n = int(rng.integers(1, 3000))
        frames += buf.push(pcm[pos:pos + n])
        pos += n
    assert len(frames) == 5 and buf.pending == 100
    np.testing.assert_array_equal(np.concatenate(frames), pcm[: 5 * FRAME_SIZE])
    tail = buf.flush()
    assert tail.shape == (FRAME_SIZE,) and tail[:100].tolist() == pcm[-100:].tolist() and not tail[100:].any()
    assert buf.flush() is None
    assert len(split_frames(pcm)) == 6 and len(split_frames(pcm, pad_last=False)) == 5
    with pytest.raises(ValueError):
        FrameBuffer(0)


def test_ogg_round_trip_is_24k_pcm_and_sounds_alike():
    pcm = tone(2.0)
    chunks = encode_ogg(pcm)
    assert chunks[0][:4] == b"OggS"
    out = decode_ogg(chunks)
    assert out.dtype == np.float32 and out.size == pcm.size
    # Opus is lossy and delays a few ms: compare the spectra's peak, not samples.
    spectrum = np.abs(np.fft.rfft(out[FRAME_SIZE:]))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / (out.size - FRAME_SIZE)
    assert abs(peak_hz - 440.0) < 5.0
    assert 0.1 < np.sqrt(np.mean(out[FRAME_SIZE:] ** 2)) < 0.4


def test_streaming_one_page_per_frame_and_split_bytes():
    enc, dec = OggOpusEncoder(), OggOpusDecoder()
    pcm = tone(1.0, 300.0)
    pages = [enc.encode(pcm[i:i + FRAME_SIZE]) for i in range(0, pcm.size, FRAME_SIZE)]
    assert all(pages) and enc.samples_in == pcm.size
    stream = b"".join(pages)
    # The decoder accepts the byte stream cut anywhere (a WebSocket message need not align with pages).
    out = np.concatenate([dec.decode(stream[i:i + 333]) for i in range(0, len(stream), 333)])
    assert out.size == pcm.size and dec.bytes_in == len(stream) and dec.samples_out == out.size


def test_non_ogg_bytes_are_invalid_audio():
    """sphn raises on bytes that are not Ogg; the decoder turns that into one InvalidAudio error."""
    assert OggOpusDecoder().decode(b"".join(encode_ogg(tone(0.48)))).size == int(0.48 * SAMPLE_RATE)
    with pytest.raises(InvalidAudio, match="not a valid Ogg/Opus stream"):
        OggOpusDecoder().decode(b"definitely not an ogg page, just forty or more bytes of text")


def _writer_pages(writer: OggOpusEncoder, pcm: np.ndarray) -> bytes:
    return b"".join(writer.encode(pcm[i:i + FRAME_SIZE]) for i in range(0, pcm.size, FRAME_SIZE))


def test_what_livekits_plugin_sends_after_a_reconnect_decodes():
    """LiveKit's PersonaPlex plugin (1.8.9) keeps encoding with its previous connection's sphn writer while
    it sleeps before reconnecting, and queues those pages ahead of the new writer's stream. Either they are
    mid-stream pages (the writer's headers went out on the dropped connection): dropped, counted, and the
    new stream decodes as if sent alone; or they are a whole stream of a writer whose headers were queued
    too: it is decoded, then the new stream as a chained one, with a fresh decoder."""
    old, new = OggOpusEncoder(), OggOpusEncoder()
    _writer_pages(old, tone(0.8, 300.0))  # went out on the connection that dropped
    stale = _writer_pages(old, tone(1.0, 350.0))  # encoded during the 1 s retry sleep
    fresh = _writer_pages(new, tone(1.6, 500.0))
    dec = OggOpusDecoder()
    out = np.concatenate([dec.decode(m) for m in (stale, fresh)])
    np.testing.assert_array_equal(out, decode_ogg(fresh))
    assert dec.pages_dropped == stale.count(b"OggS") and dec.streams_chained == 0

    failed_attempt = _writer_pages(OggOpusEncoder(), tone(1.0, 350.0))  # headers and all, queued
    dec = OggOpusDecoder()
    out = np.concatenate([dec.decode(m) for m in (failed_attempt, fresh)])
    np.testing.assert_array_equal(out, np.concatenate([decode_ogg(failed_attempt), decode_ogg(fresh)]))
    assert dec.pages_dropped == 0 and dec.streams_chained == 1
