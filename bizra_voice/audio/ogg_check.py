"""A strict, incremental Ogg page checker for the client's audio (pure Python; RFC 3533 + RFC 7845).

sphn's stream reader (0.2.1, what the reference servers use) decodes whatever it is given: it skips CRC
checks, happily accepts an Ogg stream whose codec is not Opus (it then yields silence), decodes pages of
several interleaved logical streams into one mixed signal, and raises on bytes that are not Ogg. The server
therefore checks every page before sphn sees it: capture pattern, version, CRC-32, a bounded page size, one
logical stream at a time, and an ``OpusHead`` identification header on the first page of every logical
stream. Bytes may arrive split anywhere; only complete, checked pages are passed on.

Where sphn is tolerant in a way real clients rely on, so is this checker. LiveKit's PersonaPlex plugin
(1.8.9), after a network drop, first sends pages its previous encoder produced while it was reconnecting:
either mid-stream pages with no beginning-of-stream (BOS) page before them, or a whole stream that is then
followed by a second BOS page without an end-of-stream (EOS) page. So:

- pages that arrive outside a logical stream (before the first BOS page, or after an EOS page) are dropped
  and counted, up to a bound (:data:`MAX_STRAY_PAGES` pages or :data:`MAX_STRAY_BYTES` bytes in a row), so a
  client cannot stream garbage forever; sphn would decode them, but without their OpusHead nothing says
  they are Opus at all;
- a BOS page starts a new *chained* logical stream, whether or not the previous one ended with EOS; the
  caller learns where each stream begins (:meth:`OggPageChecker.feed_runs`) and resets its decoder there;
- a page of another serial number inside a stream is refused: that is true multiplexing, which sphn would
  mix into one signal.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

CAPTURE = b"OggS"
HEADER_BYTES = 27
MAX_PAGE_BYTES = HEADER_BYTES + 255 + 255 * 255  # the largest page the format can express
_FLAG_CONTINUED, _FLAG_BOS, _FLAG_EOS = 0x01, 0x02, 0x04

# LiveKit's plugin sleeps up to 30 s between reconnect attempts while its old encoder keeps producing 40 ms
# pages (~750 pages, ~200 bytes each, of speech); twice that is still stray audio, more is someone's garbage.
MAX_STRAY_PAGES = 1500
MAX_STRAY_BYTES = 1 << 20


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return tuple(table)


_TABLE = _crc_table()


def ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, no reflection, initial value 0, no final xor)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _TABLE[((crc >> 24) ^ byte) & 0xFF]
    return crc


def ogg_page(packet: bytes, *, serial: int = 1, sequence: int = 0, granule: int = 0, flags: int = 0) -> bytes:
    """One Ogg page holding one whole packet (< 64 KiB), with a correct CRC (tests and tools)."""
    lacing = bytearray([255] * (len(packet) // 255) + [len(packet) % 255])
    header = bytearray(CAPTURE + bytes([0, flags]) + struct.pack("<qIII", granule, serial, sequence, 0))
    page = header + bytes([len(lacing)]) + lacing + packet
    page[22:26] = struct.pack("<I", ogg_crc(bytes(page)))
    return bytes(page)


def split_pages(data: bytes) -> list[bytes]:
    """Whole pages of ``data`` in order (unchecked; tests and tools that rearrange streams page by page)."""
    out, pos = [], 0
    while pos + HEADER_BYTES <= len(data):
        nseg = data[pos + 26]
        end = pos + HEADER_BYTES + nseg + sum(data[pos + HEADER_BYTES:pos + HEADER_BYTES + nseg])
        out.append(bytes(data[pos:end]))
        pos = end
    return out


class _Verdict(enum.Enum):
    """What a checked page is to the stream: its first page, one more page, or a stray to drop."""

    BEGINS = "begins"
    CONTINUES = "continues"
    DROPPED = "dropped"


class OggError(ValueError):
    """The bytes are not a valid Ogg/Opus stream; the text names the problem in one sentence."""


@dataclass(frozen=True)
class StreamRun:
    """Consecutive checked pages of one logical stream; ``begins`` when the first of them is its BOS page."""

    data: bytes
    begins: bool


class OggPageChecker:
    """Feed bytes in any split; get back the bytes of complete, valid pages (possibly empty)."""

    def __init__(self, *, max_stray_pages: int = MAX_STRAY_PAGES,
                 max_stray_bytes: int = MAX_STRAY_BYTES) -> None:
        self._buf = bytearray()
        self._serial: int | None = None  # the logical stream in progress
        self.max_stray_pages = max_stray_pages
        self.max_stray_bytes = max_stray_bytes
        self.pages = 0  # pages passed on
        self.streams = 0  # logical streams begun (BOS pages accepted)
        self.pages_dropped = 0  # pages outside any logical stream, dropped (all session long)
        self.bytes_dropped = 0
        self._stray_pages = 0  # ... in a row, since the last page passed on (the bound applies to these)
        self._stray_bytes = 0

    @property
    def pending(self) -> int:
        """Bytes held back until their page is complete."""
        return len(self._buf)

    @property
    def streams_chained(self) -> int:
        """Logical streams begun after the first one (each one a decoder reset)."""
        return max(0, self.streams - 1)

    def feed(self, data: bytes) -> bytes:
        """The checked pages completed by ``data``, as one byte string (stream boundaries not marked)."""
        return b"".join(run.data for run in self.feed_runs(data))

    def feed_runs(self, data: bytes) -> list[StreamRun]:
        """The checked pages completed by ``data``, grouped by logical stream, each run marking whether it
        begins a stream (the caller's decoder must start afresh there)."""
        self._buf += data
        runs: list[tuple[bool, bytearray]] = []
        while (checked := self._next_page()) is not None:
            page, verdict = checked
            if verdict is _Verdict.DROPPED:
                continue
            if verdict is _Verdict.BEGINS or not runs:
                runs.append((verdict is _Verdict.BEGINS, bytearray(page)))
            else:
                runs[-1][1].extend(page)
        return [StreamRun(bytes(body), begins) for begins, body in runs]

    def _next_page(self) -> tuple[bytes, _Verdict] | None:
        buf = self._buf
        if not buf:
            return None
        head = bytes(buf[:4])
        if not CAPTURE.startswith(head):
            raise OggError("the bytes are not Ogg pages (no 'OggS' capture pattern)")
        if len(buf) < HEADER_BYTES:
            return None
        if buf[4] != 0:
            raise OggError(f"unsupported Ogg page version {buf[4]}")
        flags = buf[5]
        if flags & ~0x07:
            raise OggError(f"invalid Ogg page header flags 0x{flags:02x}")
        serial, _seq, crc = struct.unpack_from("<III", buf, 14)
        nseg = buf[26]
        if len(buf) < HEADER_BYTES + nseg:
            return None
        lacing = buf[HEADER_BYTES:HEADER_BYTES + nseg]
        size = HEADER_BYTES + nseg + sum(lacing)
        if len(buf) < size:
            return None
        page = bytes(buf[:size])
        del self._buf[:size]
        check = bytearray(page)
        check[22:26] = b"\x00\x00\x00\x00"
        if ogg_crc(bytes(check)) != crc:
            raise OggError("Ogg page checksum mismatch (corrupt or truncated audio)")
        verdict = self._check_stream(page, flags, serial, nseg)
        if verdict is _Verdict.DROPPED:
            self._count_stray(len(page))
        else:
            self.pages += 1
            self._stray_pages = self._stray_bytes = 0
        return page, verdict

    def _check_stream(self, page: bytes, flags: int, serial: int, nseg: int) -> _Verdict:
        verdict = _Verdict.CONTINUES
        if flags & _FLAG_BOS:
            if flags & _FLAG_CONTINUED:
                raise OggError("an Ogg stream's first page cannot continue a packet")
            body = page[HEADER_BYTES + nseg:]
            if not body.startswith(b"OpusHead") or len(body) < 19:
                codec = body[:8].decode("ascii", errors="replace") if body else "empty"
                raise OggError(f"the Ogg stream is not Opus (its first packet is {codec!r}, not 'OpusHead')")
            if body[8] & 0xF0 != 0:
                raise OggError(f"unsupported OpusHead version {body[8]}")
            if body[9] == 0:
                raise OggError("OpusHead declares 0 channels")
            self._serial = serial  # a chained stream replaces the one in progress, EOS or not
            self.streams += 1
            verdict = _Verdict.BEGINS
        elif self._serial is None:
            return _Verdict.DROPPED  # outside any stream: stale pages of a client's previous encoder
        elif serial != self._serial:
            raise OggError("an Ogg page belongs to another logical stream "
                           "(multiplexed streams are not supported)")
        if flags & _FLAG_EOS:
            self._serial = None
        return verdict

    def _count_stray(self, size: int) -> None:
        self.pages_dropped += 1
        self.bytes_dropped += size
        self._stray_pages += 1
        self._stray_bytes += size
        if self._stray_pages > self.max_stray_pages or self._stray_bytes > self.max_stray_bytes:
            raise OggError(f"{self._stray_pages} Ogg pages ({self._stray_bytes} bytes) arrived in a row "
                           f"outside any logical stream (no beginning-of-stream page with an OpusHead)")

