"""A strict, incremental Ogg page checker for the client's audio (pure Python; RFC 3533 + RFC 7845).

sphn's stream reader decodes whatever it is given: it skips CRC checks and happily accepts an Ogg stream
whose codec is not Opus (it then yields silence). The server therefore checks every page before sphn sees
it: capture pattern, version, CRC-32, a bounded page size, one logical stream at a time, and an
``OpusHead`` identification header on the first page of every logical stream. Bytes may arrive split
anywhere; only complete, checked pages are passed on.
"""

from __future__ import annotations

import struct

CAPTURE = b"OggS"
HEADER_BYTES = 27
MAX_PAGE_BYTES = HEADER_BYTES + 255 + 255 * 255  # the largest page the format can express
_FLAG_CONTINUED, _FLAG_BOS, _FLAG_EOS = 0x01, 0x02, 0x04


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


class OggError(ValueError):
    """The bytes are not a valid Ogg/Opus stream; the text names the problem in one sentence."""


class OggPageChecker:
    """Feed bytes in any split; get back the bytes of complete, valid pages (possibly empty)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._serial: int | None = None  # the logical stream in progress
        self.pages = 0

    @property
    def pending(self) -> int:
        """Bytes held back until their page is complete."""
        return len(self._buf)

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        while True:
            page = self._next_page()
            if page is None:
                break
            out += page
        return bytes(out)

    def _next_page(self) -> bytes | None:
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
        self._check_stream(page, flags, serial, nseg, lacing)
        self.pages += 1
        return page

    def _check_stream(self, page: bytes, flags: int, serial: int, nseg: int, lacing: bytes) -> None:
        if flags & _FLAG_BOS:
            if self._serial is not None:
                raise OggError("a second Ogg stream began before the first one ended (multiplexed streams "
                               "are not supported)")
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
            self._serial = serial
        elif self._serial is None:
            raise OggError("the Ogg stream does not begin with a beginning-of-stream page")
        elif serial != self._serial:
            raise OggError("an Ogg page belongs to another logical stream (multiplexed streams are not supported)")
        if flags & _FLAG_EOS:
            self._serial = None
