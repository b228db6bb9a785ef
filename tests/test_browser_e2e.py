"""Bundled browser client, end to end: headless Debian Chromium with a fake microphone playing a
speech WAV talks to a running CPU-profile server through the real page."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"  # Debian's package (what .ci/run installs)
WAIT_MS = 120_000  # bound of each wait for the page (generous: the CPU profile shares 2 cores with the browser)
SHARED = Path(__file__).resolve().parents[2] / "shared"
SPEECH_WAV = SHARED / "audio" / "user_turn_en.wav"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
MIN_FRAMES = 50

pytestmark = pytest.mark.slow


@pytest.fixture
def base_url(request) -> str:
    """BIZRA_E2E_BASE_URL points the test at an already running server; otherwise the CPU-profile
    server fixture from conftest.py starts one."""
    url = os.environ.get("BIZRA_E2E_BASE_URL")
    if url:
        return url.rstrip("/") + "/"
    return str(request.getfixturevalue("cpu_server")).rstrip("/") + "/"


def _counters(page) -> dict:
    return page.evaluate("() => ({...document.body.dataset})")


def _diagnose(page, console_errors: list[str]) -> str:
    """What the user would see: the state pill, the error banner, counters and console errors."""
    shown = page.evaluate(
        "() => ({pill: document.getElementById('connection').textContent,"
        " error: document.getElementById('error').textContent})"
    )
    return f"page shows {shown}, counters {_counters(page)}, console errors {console_errors}"


def _screenshot(page, path: Path) -> None:
    """The page as the user saw it, for the artifacts; never the test's verdict (on a busy machine a
    full-page screenshot can take longer than Playwright's 30 s default, which failed tests that had passed)."""
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        page.screenshot(path=str(path), full_page=True, timeout=120_000)
    except Exception as exc:  # an artifact only
        print(f"screenshot {path.name} not taken: {exc!s:.200}")


def chromium_path() -> str | None:
    """The Chromium to launch: Debian's at /usr/bin/chromium, else the first ``chromium`` on $PATH."""
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


def test_browser_talks_to_server(base_url: str) -> None:
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    if not SPEECH_WAV.exists():
        pytest.skip(f"speech fixture missing: {SPEECH_WAV}")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")

    console_errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={SPEECH_WAV}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            context.grant_permissions(["microphone"])
            page = context.new_page()
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(f"uncaught: {e}"))

            page.goto(base_url, wait_until="networkidle")
            page.get_by_role("button", name="Connect and talk").click()
            try:
                page.wait_for_selector('body[data-state="connected"]', state="attached", timeout=WAIT_MS)
                page.wait_for_function(
                    """(n) => {
                        const d = document.body.dataset;
                        return +d.framesSent >= n && +d.framesReceived >= n && +d.framesDecoded >= n
                            && +d.textChars > 0 && d.rttMs !== '';
                    }""",
                    arg=MIN_FRAMES,
                    timeout=WAIT_MS,
                )
                page.wait_for_timeout(1500)  # let the jitter buffer settle for the screenshot and counters
                # by default the conversation is a WebRTC call: the assistant arrives as RTP (getStats)
                page.wait_for_function("() => +document.body.dataset.rtpPacketsReceived > 100", timeout=WAIT_MS)
            except sync_api.TimeoutError:
                pytest.fail(f"session did not stream in time: {_diagnose(page, console_errors)}")
            finally:
                ARTIFACTS.mkdir(exist_ok=True)
                _screenshot(page, ARTIFACTS / "browser_e2e.png")
            counters = _counters(page)
            transcript = page.locator(".entry.assistant .text").first.inner_text()
            status_rtt = page.locator("#stat-rtt").inner_text()

            # Typed questions (auto mode routes typed text to the knowledge model): one bubble per answer,
            # and a message the server refuses is said to be refused, not dropped.
            for question in ("What is the capital of France?", "And what is the capital of Spain?"):
                count = page.locator('.entry.knowledge[data-done="true"]').count()  # before asking
                page.fill("#ask", question)
                page.click("#ask-send")
                page.wait_for_function(
                    "(n) => document.querySelectorAll('.entry.knowledge[data-done=\"true\"]').length > n",
                    arg=count, timeout=WAIT_MS)
            answers = page.locator(".entry.knowledge .text").all_inner_texts()
            assert page.get_attribute("#ask", "maxlength") == "2000"
            page.evaluate("() => { document.getElementById('ask').value = 'why '.repeat(600); }")  # past maxlength
            page.click("#ask-send")
            page.wait_for_selector(".entry.router:has-text('not sent')", timeout=WAIT_MS)
            refused = page.locator(".entry.router:has-text('not sent') .text").first.inner_text()

            page.get_by_role("button", name="Disconnect").click()
            page.wait_for_selector('body[data-state="closed"]', state="attached", timeout=WAIT_MS)
        finally:
            browser.close()

    print(f"\nbrowser e2e (WebRTC call): counters={counters} rtt shown={status_rtt!r} text={transcript[:60]!r}")
    assert int(counters["framesSent"]) >= MIN_FRAMES
    assert int(counters["framesReceived"]) >= MIN_FRAMES
    assert int(counters["framesDecoded"]) >= MIN_FRAMES
    assert counters["transport"] == "webrtc" and counters["playback"] == "webrtc-call", counters
    assert transcript.strip(), "assistant text is shown"
    assert status_rtt.endswith("ms") or "ms" in status_rtt
    assert len(answers) == 2 and all(a.strip() for a in answers), answers
    assert "2000" in refused, refused
    assert console_errors == [], f"console errors: {console_errors}"


def test_browser_changes_persona_and_voice_live_without_reconnecting(base_url: str) -> None:
    """While connected, the user edits the persona (Apply) and picks another voice: each goes to the server
    as a live session.update, the page says it was applied (with the server's prefill time), the audio keeps
    streaming, and the page never opened a second /api/chat connection."""
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    if not SPEECH_WAV.exists():
        pytest.skip(f"speech fixture missing: {SPEECH_WAV}")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")

    persona = "أنت بزرا، خبّاز مرح يتحدث عن الخبز. You are BIZRA, a cheerful baker."
    console_errors: list[str] = []
    sockets: list[str] = []
    calls: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-audio-capture={SPEECH_WAV}", "--autoplay-policy=no-user-gesture-required"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            context.grant_permissions(["microphone"])
            page = context.new_page()
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(f"uncaught: {e}"))
            page.on("websocket", lambda ws: sockets.append(ws.url) if "/api/chat" in ws.url else None)
            page.on("request", lambda r: calls.append(r.url) if r.method == "POST" and "/v1/realtime/calls" in r.url
                    else None)

            def received() -> int:
                return int(_counters(page)["framesReceived"])

            def keeps_streaming(after: int, frames: int = 25) -> None:
                page.wait_for_function("(n) => +document.body.dataset.framesReceived >= n", arg=after + frames,
                                       timeout=WAIT_MS)

            page.goto(base_url, wait_until="networkidle")
            page.get_by_role("button", name="Connect and talk").click()
            try:
                page.wait_for_selector('body[data-state="connected"]', state="attached", timeout=WAIT_MS)
                keeps_streaming(0)
                assert page.is_enabled("#persona") and page.is_enabled("#voice")  # they change live now
                assert page.is_disabled("#mode") and page.is_disabled("#text_temperature")  # these stay locked
                assert page.is_disabled("#persona-apply")  # nothing edited yet

                page.fill("#persona", persona)
                page.get_by_role("button", name="Apply persona now").click()
                page.wait_for_selector('#live-status[data-state="applied"]', state="attached", timeout=WAIT_MS)
                persona_status = page.inner_text("#live-status")
                at_persona = received()
                keeps_streaming(at_persona)

                page.select_option("#voice", "NATF1")
                page.wait_for_selector('#live-status[data-applied="2"]', state="attached", timeout=WAIT_MS)
                voice_status = page.inner_text("#live-status")
                at_voice = received()
                keeps_streaming(at_voice)
                state = _counters(page)["state"]
            except sync_api.TimeoutError:
                pytest.fail(f"the live change did not happen in time: {_diagnose(page, console_errors)}, "
                            f"live status {page.inner_text('#live-status')!r}")
            finally:
                ARTIFACTS.mkdir(exist_ok=True)
                _screenshot(page, ARTIFACTS / "browser_live_persona.png")
            page.get_by_role("button", name="Disconnect").click()
            page.wait_for_selector('body[data-state="closed"]', state="attached", timeout=WAIT_MS)
        finally:
            browser.close()

    print(f"\nbrowser live changes: {persona_status!r} then {voice_status!r}")
    assert re.fullmatch(r"Persona updated live in \d+ ms, no reconnect\.", persona_status), persona_status
    assert re.fullmatch(r"Voice updated live in \d+ ms \(voice NATF1\), no reconnect\.", voice_status), voice_status
    assert state == "connected"
    assert len(calls) == 1 and not sockets, (calls, sockets)  # one WebRTC call for the whole test: no reconnect
    assert "session=" in calls[0] and "text_prompt" not in calls[0], calls  # a ticket, not a long URL
    assert console_errors == [], f"console errors: {console_errors}"


def _session_page(base_url: str, path: str, *, without_webrtc: bool = False) -> tuple[dict, list[str], list[str]]:
    """Open ``path`` on the page, talk until 50 frames were decoded; -> counters, conversation notes, errors."""
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    if not SPEECH_WAV.exists():
        pytest.skip(f"speech fixture missing: {SPEECH_WAV}")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")

    console_errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-audio-capture={SPEECH_WAV}", "--autoplay-policy=no-user-gesture-required"])
        try:
            context = browser.new_context()
            context.grant_permissions(["microphone"])
            if without_webrtc:
                context.add_init_script("delete window.RTCPeerConnection;")
            page = context.new_page()
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(f"uncaught: {e}"))
            page.goto(base_url + path, wait_until="networkidle")
            page.get_by_role("button", name="Connect and talk").click()
            try:
                page.wait_for_selector('body[data-state="connected"]', state="attached", timeout=WAIT_MS)
                page.wait_for_function("(n) => +document.body.dataset.framesDecoded >= n", arg=MIN_FRAMES,
                                       timeout=WAIT_MS)
                if not without_webrtc:  # the loopback's RTP packets (getStats) are counted
                    page.wait_for_function("() => +document.body.dataset.playbackPackets > 25", timeout=WAIT_MS)
            except sync_api.TimeoutError:
                pytest.fail(f"session did not stream in time: {_diagnose(page, console_errors)}")
            counters = _counters(page)
            notes = page.locator(".entry.router .text").all_inner_texts()
            page.get_by_role("button", name="Disconnect").click()
            page.wait_for_selector('body[data-state="closed"]', state="attached", timeout=WAIT_MS)
        finally:
            browser.close()
    return counters, notes, console_errors


def test_browser_over_the_websocket_plays_through_the_echo_reference_loopback(base_url: str) -> None:
    """``?transport=websocket``: Ogg/Opus over the WebSocket, and playback through the page's WebRTC loopback,
    so Chromium's echo canceller still has the assistant's voice as its reference."""
    counters, notes, errors = _session_page(base_url, "?transport=websocket")
    print(f"\nbrowser over the WebSocket: echo-reference loopback adds {counters.get('playbackDelayMs')} ms "
          f"(receiver jitter buffer); counters {counters}")
    assert counters["transport"] == "websocket" and counters["playback"] == "webrtc-loopback", counters
    assert int(counters["playbackPackets"]) > 0 and not notes, notes
    assert errors == [], f"console errors: {errors}"


def test_browser_without_webrtc_falls_back_to_the_websocket_and_says_so(base_url: str) -> None:
    """A browser without RTCPeerConnection (WebRTC blocked) still talks, over the WebSocket, with playback
    straight to the speakers; the conversation says both, and why (headphones)."""
    counters, notes, errors = _session_page(base_url, "", without_webrtc=True)
    assert counters["transport"] == "websocket" and counters["playback"] == "direct", counters
    assert "playbackPackets" not in counters and int(counters["framesDecoded"]) >= MIN_FRAMES
    assert any("WebRTC could not start" in n and "WebSocket instead" in n for n in notes), notes
    assert any("no WebRTC" in n and "headphones" in n for n in notes), notes
    assert errors == [], f"console errors: {errors}"
