"""Voices of one's own (bizra_voice/voice_upload.py): the checks on their own, the whole pipeline on the tiny
model (the stored .pt replays exactly like its recording Mimi-encoded), and the routes through the real Serve
proxy: accepted, listed, spoken with, refused with clear errors, deleted, and off by default."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import urllib.error
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest

from bizra_voice import constants as C
from bizra_voice.voice_upload import (
    UPLOADS_OFF,
    UploadLimits,
    UploadRefused,
    VoiceFolder,
    VoiceUploads,
    check_new_name,
    check_upload,
    read_capped,
    sniff_container,
)
from tests._tiny import tiny_checkpoint

LIMITS = UploadLimits(max_bytes=4 << 20, max_seconds=30.0, max_voices=3)


def synth(seconds: float, rate: int = C.SAMPLE_RATE, pitch: float = 150.0, seed: int = 7) -> np.ndarray:
    """A voice-like test signal (make-tiny's synthetic voice) at ``rate``."""
    from bizra_voice.tiny import _synth_voice

    pcm = _synth_voice(seconds, pitch, seed)
    if rate != C.SAMPLE_RATE:
        import sphn

        pcm = sphn.resample(pcm[None], src_sample_rate=C.SAMPLE_RATE, dst_sample_rate=rate)[0]
    return np.asarray(pcm, dtype=np.float32)


def wav_bytes(pcm: np.ndarray, rate: int = C.SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV in memory; ``pcm`` [samples] or [channels, samples]."""
    frames = np.atleast_2d(pcm)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(frames.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(frames.T, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def opus_bytes(pcm: np.ndarray, tmp_path: Path) -> bytes:
    import sphn

    path = tmp_path / "voice.ogg"
    sphn.write_opus(str(path), pcm[None], C.SAMPLE_RATE)
    return path.read_bytes()


def flac_bytes(pcm: np.ndarray, rate: int = C.SAMPLE_RATE) -> bytes:
    av = pytest.importorskip("av", reason="PyAV makes the FLAC test file")
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((pcm * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return out.getvalue()


def bad_opus_packets() -> bytes:
    """Well-formed Ogg pages (correct CRCs, Opus headers) around packets no Opus decoder accepts."""
    import struct

    from bizra_voice.audio.ogg_check import ogg_page

    head = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", 312, 48000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 0) + struct.pack("<I", 0)
    pages = [ogg_page(head, flags=2), ogg_page(tags, sequence=1)]
    pages += [ogg_page(bytes([0xF9, 0x01]) + bytes(40), sequence=2 + i, granule=960 * (i + 1)) for i in range(60)]
    return b"".join(pages)


def refused(fn, *args) -> UploadRefused:
    with pytest.raises(UploadRefused) as info:
        fn(*args)
    return info.value


# ---- the checks on their own ---------------------------------------------------------------------------------
def test_names_are_allow_listed_and_never_shadow_another_voice():
    assert check_new_name(" Grandma_2 ", [], ["NATM1"]) == "Grandma_2"
    for bad in ["", "../NATM1", "a/b", "x.pt", "with space", "-lead", "a" * 65, "C:\\x", "%2e%2e", "ümlaut"]:
        err = refused(check_new_name, bad, [], [])
        assert err.status == 400 and ("not allowed" in str(err) or "Name the voice" in str(err)), bad
    err = refused(check_new_name, "natm1", [], ["NATM1", "NATF0"])
    assert err.status == 409 and "this server's own voices (NATM1)" in str(err)
    assert "alias of /v1/realtime" in str(refused(check_new_name, "Alloy", [], [], ["alloy", "marin"]))
    err = refused(check_new_name, "grandma", ["Grandma"], [])
    assert err.status == 409 and "'Grandma' already exists" in str(err)


def test_containers_are_recognised_by_their_bytes(tmp_path):
    assert sniff_container(wav_bytes(synth(0.1))) == "wav"
    assert sniff_container(opus_bytes(synth(0.5), tmp_path)) == "ogg-opus"
    assert sniff_container(b"fLaC" + bytes(100)) == "flac"
    for data, says in [(b"hello, this is text", "not WAV, FLAC or Ogg-Opus"), (bytes(64), "not WAV"),
                       (b"OggS" + bytes(60) + b"\x01vorbis", "does not carry Opus"),
                       (b"--boundary\r\nContent-Disposition: form-data", "not a multipart form")]:
        err = refused(sniff_container, data)
        assert err.status == 415 and says in str(err)


@pytest.mark.parametrize("kind", ["wav-48k-stereo", "wav-24k", "ogg-opus", "flac-16k"])
def test_a_good_recording_is_decoded_to_24khz_mono_at_minus_24_lufs(kind, tmp_path):
    from bizra_voice.voices import integrated_loudness

    pcm = 0.05 * synth(3.0) / np.abs(synth(3.0)).max()  # quiet: normalising raises it
    data = {"wav-48k-stereo": lambda: wav_bytes(np.stack([synth(3.0, 48000), synth(3.0, 48000, pitch=90)]), 48000),
            "wav-24k": lambda: wav_bytes(pcm),
            "ogg-opus": lambda: opus_bytes(pcm, tmp_path),
            "flac-16k": lambda: flac_bytes(synth(3.0, 16000) * 0.3, 16000)}[kind]()
    voice = check_upload(data, LIMITS)
    assert voice.container == {"wav-48k-stereo": "wav", "wav-24k": "wav", "ogg-opus": "ogg-opus",
                               "flac-16k": "flac"}[kind]
    assert voice.pcm.dtype == np.float32 and voice.pcm.ndim == 1
    assert abs(voice.seconds - 3.0) < 0.05, voice.seconds
    assert abs(integrated_loudness(voice.pcm) - (-24.0)) < 0.5
    assert abs(voice.input_lufs - integrated_loudness(check_upload(data, LIMITS).pcm)) > 1.0  # it was changed


def test_length_silence_and_decodability_are_checked(tmp_path):
    cases = {
        "too long": (wav_bytes(synth(31.0)), 413, "longer than 30 s"),
        "too long opus": (opus_bytes(synth(31.0), tmp_path), 413, "longer than 30 s"),
        "too short": (wav_bytes(synth(1.5)), 422, "1.5 s long; a voice needs at least 2 s"),
        "silent": (wav_bytes(np.zeros(24000 * 3, np.float32)), 422, "is silent"),
        "nearly silent": (wav_bytes(6e-4 * np.random.default_rng(0).standard_normal(24000 * 3)), 422,
                          "nearly silent"),
        "three channels": (wav_bytes(np.stack([synth(3.0)] * 3)), 422, "3 channels"),
        "header only": (wav_bytes(synth(3.0))[:44], 422, "holds no audio"),
        "corrupt wav": (b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(300), 422, "could not be decoded"),
        "cut opus": (opus_bytes(synth(3.0), tmp_path)[:-100], 422, "is damaged"),
        "bad opus packets": (bad_opus_packets(), 422, "could not be decoded"),
        "too big": (bytes(LIMITS.max_bytes + 1), 413, "larger than 4 MiB"),
    }
    for case, (data, status, says) in cases.items():
        err = refused(check_upload, data, LIMITS)
        assert err.status == status and says in str(err), (case, err.status, str(err))


def test_a_small_file_that_would_decode_to_minutes_is_refused_before_decoding(tmp_path):
    """An Ogg-Opus file is timed from its packets' TOC bytes first: 2 minutes of silence is a small file, and
    what it would decode to is known (and refused) before the decoder runs."""
    data = opus_bytes(np.zeros(24000 * 120, np.float32), tmp_path)
    assert len(data) < LIMITS.max_bytes / 8
    err = refused(check_upload, data, LIMITS)
    assert err.status == 413 and "120.0 s long, longer than 30 s" in str(err)


def test_the_body_is_refused_as_soon_as_it_is_too_large():
    async def never():
        raise AssertionError("the body must not be read when Content-Length is already too large")
        yield b""  # pragma: no cover

    async def chunks(n: int, size: int):
        for _ in range(n):
            yield bytes(size)

    async def scenario():
        with pytest.raises(UploadRefused, match="larger than 1 MiB") as info:
            await read_capped(never(), str(2 << 20), 1 << 20)
        assert info.value.status == 413
        with pytest.raises(UploadRefused, match="larger than 1 MiB"):
            await read_capped(chunks(300, 4096), None, 1 << 20)  # no Content-Length: counted while read
        with pytest.raises(UploadRefused, match="no body"):
            await read_capped(chunks(0, 1), "0", 1 << 20)
        assert await read_capped(chunks(2, 10), "20", 1 << 20) == bytes(20)

    asyncio.run(scenario())


# ---- the pipeline on the tiny model (no Serve) ---------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle():
    import torch

    from bizra_voice.engine.checkpoint import resolve_local
    from bizra_voice.engine.loading import load_bundle

    return load_bundle(resolve_local(tiny_checkpoint()), torch.device("cpu"), torch.float32)


def replica(bundle, folder: Path, limits: UploadLimits = LIMITS) -> VoiceUploads:
    """One replica's uploads: its own catalog and library over the shared tiny voices and ``folder``."""
    from bizra_voice.voices import VoiceCatalog, VoiceLibrary

    library = VoiceLibrary(VoiceCatalog(tiny_checkpoint() / "voices"), bundle.voice_mimi, bundle.lm.dim)
    return VoiceUploads(library, bundle.lm, VoiceFolder(folder).create(), limits, reserved=["alloy"])


def greedy_tokens(bundle, voice, steps: int = 12) -> list[list[int]]:
    from bizra_voice.engine.api import SamplingParams
    from bizra_voice.engine.batched import BatchedEngine, PreparedPrompt

    tokens = bundle.tokenizer.encode("<system> You are calm. <system>")
    user = np.random.default_rng(0).integers(0, 2048, size=(steps, 8))
    engine = BatchedEngine(bundle, 1)
    try:
        engine.start_slot(0, PreparedPrompt(voice, tokens), SamplingParams(greedy=True))
        return [engine.step_codes(user[t][None], np.ones(1, bool))[0][0].tolist() for t in range(steps)]
    finally:
        engine.close()


def test_an_uploaded_voice_replays_exactly_like_its_recording_mimi_encoded(bundle, tmp_path):
    """The stored .pt (embeddings from the replica's own LM tables) gives the same conversation as encoding
    the normalised recording at session start, the WAV path: so it is the same voice, without that cost."""
    from bizra_voice.voices import VoicePrompt, encode_voice_pcm

    uploads = replica(bundle, tmp_path / "voices-custom")
    data = wav_bytes(np.stack([synth(3.0, 48000), synth(3.0, 48000, pitch=120)]), 48000)
    told = uploads.add("Grandma", data)
    assert told["name"] == "Grandma" and told["kind"] == "custom" and told["frames"] == 38
    assert told["container"] == "wav" and told["processing_ms"]["total"] > 0
    assert (tmp_path / "voices-custom" / "Grandma.pt").is_file()
    assert {"name": "Grandma", "kind": "custom"} in uploads.catalog.listing()

    custom = uploads.library.prepare("Grandma")
    assert custom.embeddings is not None and custom.frames == 38  # replayed, not encoded per session
    pcm = check_upload(data, LIMITS).pcm
    codes = encode_voice_pcm(bundle.voice_mimi, pcm)
    assert greedy_tokens(bundle, custom) == greedy_tokens(bundle, VoicePrompt("src", codes.shape[1], codes))


def test_duplicates_the_cap_and_removal(bundle, tmp_path):
    from bizra_voice.engine.api import BadSessionRequest

    folder = tmp_path / "voices-custom"
    uploads = replica(bundle, folder)
    data = wav_bytes(synth(2.5))
    uploads.add("one", data)
    before = (folder / "one.pt").read_bytes()
    err = refused(uploads.add, "ONE", wav_bytes(synth(2.5, pitch=200)))
    assert err.status == 409 and "'one' already exists" in str(err)
    assert (folder / "one.pt").read_bytes() == before  # never overwritten
    assert refused(uploads.add, "NATF2", data).status == 409
    assert refused(uploads.add, "alloy", data).status == 409
    uploads.add("two", data)
    uploads.add("three", data)
    err = refused(uploads.add, "four", data)
    assert err.status == 409 and "already holds 3 uploaded voices" in str(err)
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "one.pt", "three.pt", "two.pt"]

    assert uploads.remove("two") == {"deleted": "two"}
    with pytest.raises(BadSessionRequest, match="Unknown voice 'two'"):
        uploads.library.prepare("two")
    assert refused(uploads.remove, "two").status == 404
    assert refused(uploads.remove, "NATM1").status == 403
    assert refused(uploads.remove, "../x").status == 400
    assert (tiny_checkpoint() / "voices" / "NATM1.pt").is_file()


def test_a_refused_upload_writes_nothing(bundle, tmp_path):
    folder = tmp_path / "voices-custom"
    uploads = replica(bundle, folder)
    for name, data in [("quiet", wav_bytes(np.zeros(24000 * 3, np.float32))), ("text", b"not audio at all"),
                       ("long", wav_bytes(synth(31.0))), ("../evil", wav_bytes(synth(3.0)))]:
        refused(uploads.add, name, data)
    assert [p.name for p in folder.iterdir()] == []


def test_another_replica_of_the_node_sees_uploads_and_removals(bundle, tmp_path):
    """Replicas of one node share the folder: the catalog reads it on every use, and a voice re-uploaded
    under a removed name is prepared again (its file changed), not served from the old cache."""
    from bizra_voice.engine.api import BadSessionRequest

    folder = tmp_path / "voices-custom"
    a, b = replica(bundle, folder), replica(bundle, folder)
    a.add("shared", wav_bytes(synth(2.5, pitch=110)))
    first = b.library.prepare("shared")
    assert {"name": "shared", "kind": "custom"} in b.catalog.listing()
    a.remove("shared")
    with pytest.raises(BadSessionRequest, match="Unknown voice 'shared'"):
        b.library.prepare("shared")
    a.add("shared", wav_bytes(synth(3.5, pitch=220)))
    again = b.library.prepare("shared")
    assert again.frames != first.frames
    assert refused(b.add, "shared", wav_bytes(synth(2.5))).status == 409


# ---- through the Serve proxy -----------------------------------------------------------------------------------
TOKEN = "upload-test-token"


def http(method: str, url: str, body: bytes | None = None, token: str | None = TOKEN,
         content_type: str = "audio/wav") -> tuple[int, dict]:
    headers = {"Content-Type": content_type} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def uploads_server(ray_session, cpu_server, cpu_args, tmp_path_factory):
    """The CPU profile with uploads on, an access token, two slots and its own cache dir."""
    from ray import serve

    from bizra_voice.app import build_app
    from tests.conftest import wait_ready

    args = copy.deepcopy(cpu_args)
    cache = tmp_path_factory.mktemp("uploads-cache")
    args.update(cache_dir=str(cache), tiny_engine=False)
    args["engine"].update(checkpoint=str(tiny_checkpoint()), slots=2)
    for side in ("qwen", "knowledge"):  # the knowledge model's section (not needed here)
        if side in args:
            args[side]["enabled"] = False
    args["transcriber"] = {**args.get("transcriber", {}), "enabled": False}
    args["recording"] = {"enabled": False}
    args["voice_server"]["debug_record_dir"] = None
    args["access"] = {"token": TOKEN, "token_env": None}
    args["voices"] = {"uploads": True, "max_voices": 4, "max_upload_mb": 2}
    serve.run(build_app(args), name="bizra-uploads", route_prefix="/uploads", blocking=False)
    base = cpu_server + "/uploads"
    wait_ready(base, query=f"?token={TOKEN}")
    yield base, cache / "voices-custom"
    serve.delete("bizra-uploads")


def session_started(base: str, voice: str) -> tuple[dict | None, list[str], float | None]:
    from bizra_voice.chat_client import chat_url, run_chat

    result = asyncio.run(run_chat(chat_url(base, voice_prompt=voice, token=TOKEN), synth(0.8), drain_s=0.5))
    return result.event("session.started"), result.errors, result.handshake_s


@pytest.mark.slow
def test_an_upload_is_listed_spoken_with_and_deleted(uploads_server):
    base, folder = uploads_server
    status, body = http("POST", f"{base}/api/voices?name=Grandma", wav_bytes(synth(2.4, pitch=110, seed=1234)))
    assert status == 201, body
    assert body["name"] == "Grandma" and body["kind"] == "custom" and body["frames"] == 30
    print(f"\nupload processing (2.4 s WAV, tiny CPU): {body['processing_ms']}")
    status, listing = http("GET", f"{base}/api/voices")
    assert {"name": "Grandma", "kind": "custom"} in listing["voices"]
    assert listing["uploads"]["enabled"] is True and listing["uploads"]["count"] == 1
    assert listing["uploads"]["max_seconds"] == 30.0 and listing["uploads"]["max_voices"] == 4

    figures: dict[str, list[str]] = {"Grandma": [], "NATM1": []}
    for order in (["Grandma", "NATM1"], ["NATM1", "Grandma"]):  # NATM1: a preset .pt of a 2.4 s recording too
        for voice in order:
            started, errors, handshake_s = session_started(base, voice)
            assert started is not None and started["voice"] == voice, errors
            figures[voice].append(f"{started['prefill_ms']} ms prefill / {handshake_s * 1000:.0f} ms handshake")
    print(f"custom Grandma: {figures['Grandma']}; preset NATM1: {figures['NATM1']}")

    status, body = http("DELETE", f"{base}/api/voices/Grandma")
    assert status == 200 and body == {"deleted": "Grandma"}
    assert not (folder / "Grandma.pt").exists()
    started, errors, _ = session_started(base, "Grandma")
    assert started is None and errors and "Unknown voice 'Grandma'" in errors[-1], errors
    assert http("DELETE", f"{base}/api/voices/Grandma")[0] == 404
    status, body = http("DELETE", f"{base}/api/voices/NATM1")
    assert status == 403 and "only uploaded voices can be deleted" in body["error"]


@pytest.mark.slow
def test_bad_uploads_get_clear_errors_and_write_nothing(uploads_server, tmp_path):
    base, folder = uploads_server
    before = sorted(p.name for p in folder.iterdir())
    good = wav_bytes(synth(2.5))
    cases = [
        ("too-long", wav_bytes(synth(31.0, 8000), 8000), 413, "longer than 30 s"),
        ("too-short", wav_bytes(synth(1.0)), 422, "at least 2 s"),
        ("silent", wav_bytes(np.zeros(24000 * 3, np.float32)), 422, "silent"),
        ("text", b"this is not audio", 415, "not WAV, FLAC or Ogg-Opus"),
        ("huge", bytes(3 << 20), 413, "larger than 2 MiB"),
        ("bad%20name", good, 400, "not allowed"),
        ("..%2Fup", good, 400, "not allowed"),
        ("NATF2", good, 409, "this server's own voices"),
        ("marin", good, 409, "alias of /v1/realtime"),
    ]
    for name, data, status, says in cases:
        got, body = http("POST", f"{base}/api/voices?name={name}", data)
        assert got == status and says in body["error"], (name, got, body)
    got, body = http("POST", f"{base}/api/voices", good)
    assert got == 400 and "Name the voice" in body["error"]
    got, body = http("POST", f"{base}/api/voices?name=nobody", good, token=None)
    assert got == 401 and "access token is required" in body["error"]
    got, body = http("POST", f"{base}/api/voices?name=wrong", good, token="not-it")
    assert got == 401
    assert sorted(p.name for p in folder.iterdir()) == before

    assert http("POST", f"{base}/api/voices?name=twice", good)[0] == 201
    got, body = http("POST", f"{base}/api/voices?name=Twice", good)
    assert got == 409 and "'twice' already exists" in body["error"]
    assert http("DELETE", f"{base}/api/voices/twice")[0] == 200


@pytest.mark.slow
def test_uploads_are_off_by_default_and_nothing_is_written(cpu_server, cpu_args):
    status, body = http("POST", f"{cpu_server}/api/voices?name=Grandma", wav_bytes(synth(2.5)), token=None)
    assert status == 403 and body["error"] == UPLOADS_OFF
    assert http("DELETE", f"{cpu_server}/api/voices/NATM1", token=None) == (403, {"error": UPLOADS_OFF})
    status, listing = http("GET", f"{cpu_server}/api/voices", token=None)
    assert listing["uploads"] == {"enabled": False}
    assert all(v["kind"] == "preset" for v in listing["voices"])
    assert not (Path(cpu_args["cache_dir"]).expanduser() / "voices-custom").exists()


@pytest.mark.slow
def test_the_browser_client_records_uploads_picks_and_deletes_a_voice(uploads_server):
    """Headless Chromium, fake microphone playing speech: record a few seconds, upload, see it selected as a
    custom voice; then upload a picked file and delete it again, all through the bundled page."""
    from tests._tiny import SPEECH_WAV
    from tests.test_browser_e2e import chromium_path

    chromium = chromium_path()
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    if not SPEECH_WAV.exists():
        pytest.skip(f"speech fixture missing: {SPEECH_WAV}")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")
    base, folder = uploads_server
    wait_ms = 120_000
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={SPEECH_WAV}", "--autoplay-policy=no-user-gesture-required"])
        try:
            context = browser.new_context()
            context.grant_permissions(["microphone"])
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            page.goto(f"{base}/?token={TOKEN}", wait_until="networkidle")
            page.wait_for_selector("#voice-upload:not([hidden])", timeout=wait_ms)
            page.click("#voice-upload summary")
            page.fill("#voice-name", "FromTheMic")
            page.click("#voice-record")
            page.wait_for_function("() => /Stop \\((3|4|5)\\./.test(document.getElementById('voice-record').textContent)",
                                   timeout=wait_ms)
            page.click("#voice-record")
            page.wait_for_selector("#voice-take:has-text('Recorded')", timeout=wait_ms)
            page.click("#voice-send")
            page.wait_for_selector("#voice-upload-status[data-state='applied']", timeout=wait_ms)
            status = page.inner_text("#voice-upload-status")
            assert "Voice FromTheMic added" in status, (status, errors)
            assert page.input_value("#voice") == "FromTheMic"
            assert page.inner_text("#voice option[value='FromTheMic']") == "FromTheMic (custom)"
            assert (folder / "FromTheMic.pt").is_file()

            page.fill("#voice-name", "FromAFile")
            page.set_input_files("#voice-file", str(SPEECH_WAV))
            page.click("#voice-send")
            page.wait_for_selector("#voice-upload-status:has-text('Voice FromAFile added')", timeout=wait_ms)
            assert page.input_value("#voice") == "FromAFile"
            page.click("#voice-delete")
            page.wait_for_selector("#voice-upload-status:has-text('Voice FromAFile deleted')", timeout=wait_ms)
            assert page.locator("#voice option[value='FromAFile']").count() == 0
            assert not (folder / "FromAFile.pt").exists()

            page.fill("#voice-name", "FromTheMic")  # refused in the page, before anything is sent
            page.set_input_files("#voice-file", str(SPEECH_WAV))
            page.click("#voice-send")
            assert "exists already" in page.inner_text("#voice-upload-status")
            assert errors == []
        finally:
            browser.close()
    assert http("DELETE", f"{base}/api/voices/FromTheMic")[0] == 200
