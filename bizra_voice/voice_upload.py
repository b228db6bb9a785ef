"""Voices of one's own: an uploaded recording, checked, loudness-normalised to -24 LUFS, Mimi-encoded and
stored as a PersonaPlex ``.pt`` prompt, so a session that names it costs what a preset's costs.

Checks run cheapest first and nothing is written before the last one passed: the name (allow-list, not a
preset, an operator voice or an OpenAI alias, not taken); the size (``Content-Length``, then while reading);
the container (magic bytes: WAV, FLAC, Ogg-Opus); the stream (mono or stereo, 8-192 kHz); the length, bounded
before any large decode (WAV/FLAC: the header's duration, then decoding stops just past the limit; Ogg-Opus:
timed from its packets' TOC bytes first), so a small file that decodes to hours costs no memory; loudness
(not silent). Then the PCM is normalised, Mimi-encoded by the replica's voice Mimi, turned into input
embeddings by the replica's own LM tables, and written whole (temporary file, then renamed; never over a voice
that exists) under a node-wide lock that also enforces the count cap.

The upload is decoded from memory — Ogg-Opus by sphn's bytes reader, WAV/FLAC by sphn's file reader on an
anonymous in-memory file (Linux ``memfd``) — so its bytes never touch disk; only the finished ``.pt`` does.
The folder is node-local: replicas of one node share it (the catalog reads it on every use), other nodes do
not, unless ``cache_dir`` is shared storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bizra_voice import constants as C
from bizra_voice.voices import integrated_loudness, normalise_loudness, pt_voice_state, valid_voice_name

MIN_SECONDS = 2.0
MIN_LUFS = -60.0  # quieter than this is silence or a muted microphone, not a voice to imitate
MAX_CHANNELS = 2
SAMPLE_RATES = (8_000, 192_000)
UPLOADS_OFF = ("Voice uploads are off on this server; the operator enables them with `voices.uploads: true` "
               "in the app config.")
FORMATS = "WAV, FLAC or Ogg-Opus"
_LABEL = {"wav": "WAV", "flac": "FLAC", "ogg-opus": "Ogg-Opus"}


class UploadRefused(Exception):
    """Why an upload (or a removal) was refused, as one sentence for the client, with its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 16 << 20
    max_seconds: float = 30.0
    max_voices: int = 32
    min_seconds: float = MIN_SECONDS
    min_lufs: float = MIN_LUFS

    def describe(self) -> dict[str, Any]:
        return {"max_bytes": self.max_bytes, "max_seconds": self.max_seconds, "min_seconds": self.min_seconds,
                "max_voices": self.max_voices, "formats": ["wav", "flac", "ogg-opus"]}


@dataclass
class CheckedVoice:
    """A recording that passed every check: 24 kHz mono at -24 LUFS, and what was measured on the way."""

    pcm: np.ndarray
    seconds: float
    input_lufs: float
    container: str


# ---- pure checks -------------------------------------------------------------------------------------------
def check_new_name(name: str | None, taken: Iterable[str], fixed: Iterable[str], reserved: Iterable[str] = ()) -> str:
    """The name a new voice may have, or ``UploadRefused``: allow-listed, and no other voice's name in any
    letter case (``fixed``: presets and operator voices; ``reserved``: the OpenAI voice aliases)."""
    name = (name or "").strip()
    if not name:
        raise UploadRefused("Name the voice: add ?name=<name> (letters, digits, '_' or '-', up to 64).")
    if not valid_voice_name(name):
        raise UploadRefused(f"Voice name {name[:80]!r} is not allowed: use 1 to 64 letters, digits, '_' or '-', "
                            "starting with a letter or digit.")
    lower = name.lower()
    for other in fixed:
        if other.lower() == lower:
            raise UploadRefused(f"{name!r} is the name of one of this server's own voices ({other}); choose "
                                "another name.", 409)
    for other in reserved:
        if other.lower() == lower:
            raise UploadRefused(f"{name!r} is a voice alias of /v1/realtime; choose another name.", 409)
    for other in taken:
        if other.lower() == lower:
            raise UploadRefused(f"A voice named {other!r} already exists; delete it first or choose another "
                                "name.", 409)
    return name


def sniff_container(data: bytes) -> str:
    """``wav``, ``flac`` or ``ogg-opus`` from the first bytes; anything else is refused (415)."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        if b"OpusHead" in data[:512]:
            return "ogg-opus"
        raise UploadRefused("This Ogg file does not carry Opus audio; send " + FORMATS + ".", 415)
    if data[:2] == b"--" or data[:64].lstrip().lower().startswith(b"content-disposition"):
        raise UploadRefused("Send the audio file itself as the request body (curl --data-binary @voice.wav), "
                            "not a multipart form.", 415)
    raise UploadRefused("The upload is not " + FORMATS + " audio.", 415)


def check_recording(mono: np.ndarray, limits: UploadLimits, container: str) -> CheckedVoice:
    """Length, finiteness and loudness of 24 kHz mono PCM; the normalised voice or ``UploadRefused``."""
    seconds = mono.shape[0] / C.SAMPLE_RATE
    if seconds > limits.max_seconds:
        raise UploadRefused(f"The recording is longer than {limits.max_seconds:g} s; trim it to between "
                            f"{limits.min_seconds:g} and {limits.max_seconds:g} s.", 413)
    if seconds < limits.min_seconds:
        raise UploadRefused(f"The recording is {seconds:.1f} s long; a voice needs at least "
                            f"{limits.min_seconds:g} s of speech.", 422)
    if not np.isfinite(mono).all():
        raise UploadRefused("The recording contains NaN or infinite samples.", 422)
    loudness = integrated_loudness(mono)
    if not np.isfinite(loudness):
        raise UploadRefused("The recording is silent.", 422)
    if loudness < limits.min_lufs:
        raise UploadRefused(f"The recording is nearly silent ({loudness:.0f} LUFS; at least {limits.min_lufs:g} "
                            "needed): check the microphone and record closer to it.", 422)
    return CheckedVoice(normalise_loudness(mono, loudness), seconds, loudness, container)


# ---- decoding from memory --------------------------------------------------------------------------------
def _decoder_error(exc: BaseException) -> bool:
    """What sphn raises for bad input (ValueError, OSError), including a Rust panic (pyo3's PanicException is
    a BaseException); a bug of ours (TypeError, ...) is not one of them and is not hidden."""
    return isinstance(exc, (ValueError, OSError, RuntimeError)) or type(exc).__name__ == "PanicException"


def _opus_packet_samples(packet: bytes) -> int:
    """Samples at 48 kHz that one Opus packet decodes to, from its TOC byte (RFC 6716 section 3.1)."""
    if not packet:
        return 2880  # a lost/empty packet: the decoder may conceal up to 120 ms
    toc = packet[0]
    config = toc >> 3
    if config < 12:
        per_frame = (480, 960, 1920, 2880)[config % 4]  # SILK 10/20/40/60 ms
    elif config < 16:
        per_frame = (480, 960)[config % 2]  # hybrid 10/20 ms
    else:
        per_frame = (120, 240, 480, 960)[config % 4]  # CELT 2.5/5/10/20 ms
    code = toc & 3
    frames = 1 if code == 0 else 2 if code < 3 else (packet[1] & 0x3F if len(packet) > 1 else 0)
    return per_frame * frames


def ogg_opus_seconds(data: bytes) -> float:
    """How long an Ogg-Opus file decodes to, from its packets' TOC bytes, without decoding it: what the
    decoder will produce is known (and bounded) before it runs."""
    samples, packet, pos = 0, bytearray(), 0
    while pos < len(data):
        if data[pos:pos + 4] != b"OggS" or pos + 27 > len(data):
            raise UploadRefused("The Ogg-Opus upload is damaged (an Ogg page is broken or cut short).", 422)
        nseg = data[pos + 26]
        lacing = data[pos + 27:pos + 27 + nseg]
        body = pos + 27 + nseg
        if len(lacing) < nseg or body + sum(lacing) > len(data):
            raise UploadRefused("The Ogg-Opus upload is damaged (an Ogg page is broken or cut short).", 422)
        for size in lacing:
            packet += data[body:body + size]
            body += size
            if size < 255:  # the packet ends here
                if not packet.startswith((b"OpusHead", b"OpusTags")):
                    samples += _opus_packet_samples(bytes(packet))
                packet = bytearray()
        pos = body
    return samples / 48_000


def _decode_opus(data: bytes, limits: UploadLimits) -> np.ndarray:
    import soxr
    import sphn

    declared = ogg_opus_seconds(data)
    if declared > limits.max_seconds + 1.0:
        raise UploadRefused(f"The recording is {declared:.1f} s long, longer than {limits.max_seconds:g} s; trim "
                            "it.", 413)
    pcm, rate = sphn.read_opus_bytes(data)
    pcm = np.atleast_2d(np.asarray(pcm, dtype=np.float32))
    mono = pcm.mean(axis=0) if pcm.shape[0] > 1 else pcm[0]
    return np.ascontiguousarray(soxr.resample(mono, rate, C.SAMPLE_RATE) if rate != C.SAMPLE_RATE else mono,
                                dtype=np.float32)


def _decode_file(data: bytes, limits: UploadLimits) -> np.ndarray:
    """WAV/FLAC through sphn's file reader on an in-memory file (never on disk); at most the length limit
    plus one second is decoded."""
    import sphn

    if not hasattr(os, "memfd_create"):
        raise UploadRefused("WAV and FLAC uploads need a Linux server (in-memory decoding); send Ogg-Opus.", 415)
    fd = os.memfd_create("bizra-voice-upload", getattr(os, "MFD_CLOEXEC", 0))
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        reader = sphn.FileReader(f"/proc/self/fd/{fd}")
        channels, rate = int(reader.channels), int(reader.sample_rate)
        if not 1 <= channels <= MAX_CHANNELS:
            raise UploadRefused(f"The recording has {channels} channels; send mono or stereo.", 422)
        if not SAMPLE_RATES[0] <= rate <= SAMPLE_RATES[1]:
            raise UploadRefused(f"The recording's sample rate ({rate} Hz) is outside 8-192 kHz.", 422)
        if float(reader.duration_sec) > limits.max_seconds + 0.5:
            raise UploadRefused(f"The recording is {float(reader.duration_sec):.1f} s long, longer than "
                                f"{limits.max_seconds:g} s; trim it.", 413)
        pcm = np.asarray(reader.decode(0.0, limits.max_seconds + 1.0), dtype=np.float32)
    finally:
        os.close(fd)
    if pcm.ndim == 1:
        pcm = pcm[None]
    mono = pcm.mean(axis=0) if pcm.shape[0] > 1 else pcm[0]
    if rate != C.SAMPLE_RATE and mono.size:
        import soxr  # exact length (sphn's resampler pads its last chunk)

        mono = soxr.resample(mono, rate, C.SAMPLE_RATE)
    return np.ascontiguousarray(mono, dtype=np.float32)


def decode_upload(data: bytes, limits: UploadLimits) -> tuple[np.ndarray, str]:
    """24 kHz mono float32 PCM of an upload (at most the limit plus a second of it) and its container."""
    if len(data) > limits.max_bytes:
        raise UploadRefused(f"The upload is larger than {limits.max_bytes / 2**20:g} MiB.", 413)
    container = sniff_container(data)
    try:
        mono = _decode_opus(data, limits) if container == "ogg-opus" else _decode_file(data, limits)
    except UploadRefused:
        raise
    except BaseException as exc:
        if not _decoder_error(exc):
            raise
        why = re.sub(r'"/proc/self/fd/\d+":\s*', "", str(exc))[:160]  # the in-memory file's name says nothing
        raise UploadRefused(f"The {_LABEL[container]} upload could not be decoded ({why}).", 422) from None
    return mono, container


def check_upload(data: bytes, limits: UploadLimits) -> CheckedVoice:
    """Every check of the audio itself, from the upload's bytes (pure: no model, nothing written)."""
    mono, container = decode_upload(data, limits)
    if mono.size == 0:
        raise UploadRefused(f"The {_LABEL[container]} upload holds no audio.", 422)
    return check_recording(mono, limits, container)


async def read_capped(chunks: AsyncIterator[bytes], declared_length: str | None, max_bytes: int) -> bytes:
    """The request body, refused (413) as soon as it is declared or found to be larger than ``max_bytes``."""
    too_large = UploadRefused(f"The upload is larger than {max_bytes / 2**20:g} MiB.", 413)
    if declared_length is not None:
        try:
            declared = int(declared_length)
        except ValueError:
            raise UploadRefused("Content-Length is not a number.") from None
        if declared > max_bytes:
            raise too_large
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    if not body:
        raise UploadRefused("The request has no body: send the audio file as the body.")
    return bytes(body)


# ---- the node's folder -------------------------------------------------------------------------------------
class VoiceFolder:
    """``<cache_dir>/voices-custom``: ``<name>.pt`` files, written whole and never over one that exists."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def create(self) -> VoiceFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    @contextlib.contextmanager
    def locked(self):
        """A node-wide lock (replicas of this node write here too)."""
        with open(self.path / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write_new(self, name: str, content: bytes) -> Path:
        """Write ``<name>.pt`` whole (a reader never sees half a file); FileExistsError if it exists.
        Callers hold ``locked()``, so no other writer of this node can create it in between."""
        final = self.path / f"{name}.pt"
        if final.exists():
            raise FileExistsError(final)
        temp = self.path / f".{name}.{uuid.uuid4().hex[:8]}.tmp"  # not a voice name: never listed
        try:
            with open(temp, "xb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
        finally:
            temp.unlink(missing_ok=True)
        return final

    def remove(self, name: str) -> bool:
        try:
            (self.path / f"{name}.pt").unlink()
        except FileNotFoundError:
            return False
        return True


# ---- one replica's uploads -----------------------------------------------------------------------------------
class VoiceUploads:
    """Uploads through one replica: its voice library (catalog + voice Mimi), its LM's embedding tables and
    the node's folder. ``upload``/``remove`` are what the routes call."""

    def __init__(self, library: Any, lm: Any, folder: VoiceFolder, limits: UploadLimits,
                 reserved: Iterable[str] = ()) -> None:
        self.library = library
        self.lm = lm
        self.folder = folder
        self.limits = limits
        self.reserved = tuple(reserved)
        self._busy = asyncio.Lock()  # one upload is processed at a time per replica (bounded CPU and memory)
        library.catalog.attach_uploads(folder.path)

    @classmethod
    def attach(cls, models: Any, folder: Path, limits: UploadLimits, reserved: Iterable[str] = ()) -> VoiceUploads:
        """Enable uploads on a replica's ``LoadedModels`` (creates the folder)."""
        import pyloudnorm  # noqa: F401  imported now, not by the first upload (about a second on a small CPU)
        import soxr  # noqa: F401

        return cls(models.library, models.bundle.lm, VoiceFolder(folder).create(), limits, reserved)

    @property
    def catalog(self) -> Any:
        return self.library.catalog

    def describe(self) -> dict[str, Any]:
        return {"enabled": True, "count": len(self.catalog.uploaded()), **self.limits.describe()}

    def check_name(self, name: str | None) -> str:
        return check_new_name(name, self.catalog.uploaded(), self.catalog.fixed_names(), self.reserved)

    async def upload(self, name: str | None, body: AsyncIterator[bytes], declared_length: str | None) -> dict:
        """Check, read, process off the event loop (the tick thread is never waited on) and store."""
        name = self.check_name(name)
        if len(self.catalog.uploaded()) >= self.limits.max_voices:
            raise self._full()
        data = await read_capped(body, declared_length, self.limits.max_bytes)
        if self._busy.locked():
            raise UploadRefused("Another voice is being processed on this replica; try again in a few seconds.",
                                429)
        async with self._busy:
            return await asyncio.to_thread(self.add, name, data)

    def add(self, name: str, data: bytes) -> dict[str, Any]:
        """Blocking: decode, check, encode, embed and store; returns what the client is told (201)."""
        import torch

        started = time.perf_counter()
        name = self.check_name(name)
        voice = check_upload(data, self.limits)
        checked = time.perf_counter()
        codes = self.library.encode(voice.pcm)
        state = pt_voice_state(self.lm, codes)
        encoded = time.perf_counter()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with self.folder.locked():
            uploaded = self.catalog.uploaded()
            name = check_new_name(name, uploaded, self.catalog.fixed_names(), self.reserved)  # a race lost
            if len(uploaded) >= self.limits.max_voices:
                raise self._full()
            try:
                self.folder.write_new(name, buffer.getvalue())
            except FileExistsError:
                raise UploadRefused(f"A voice named {name!r} already exists; choose another name.", 409) from None
        self.library.prepare(name)  # read back as sessions will, and ready for the first one
        done = time.perf_counter()
        return {"name": name, "kind": "custom", "seconds": round(voice.seconds, 2), "frames": int(codes.shape[1]),
                "container": voice.container, "input_lufs": round(voice.input_lufs, 1),
                "processing_ms": {"check": round((checked - started) * 1000, 1),
                                  "encode": round((encoded - checked) * 1000, 1),
                                  "total": round((done - started) * 1000, 1)}}

    def remove(self, name: str) -> dict[str, Any]:
        """Delete an uploaded voice; presets and operator voices cannot be removed (403)."""
        if not valid_voice_name(name or ""):
            raise UploadRefused(f"Voice name {str(name)[:80]!r} is not valid.")
        if name in self.catalog.fixed_names():
            raise UploadRefused(f"{name!r} is one of this server's own voices; only uploaded voices can be "
                                "deleted.", 403)
        with self.folder.locked():
            removed = self.folder.remove(name)
        self.library.forget(name)
        if not removed:
            raise UploadRefused(f"There is no uploaded voice named {name!r}.", 404)
        return {"deleted": name}

    def _full(self) -> UploadRefused:
        return UploadRefused(f"This server already holds {self.limits.max_voices} uploaded voices, its limit; "
                             "delete one first.", 409)
