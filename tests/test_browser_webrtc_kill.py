"""A replica killed during the browser's WebRTC call: the page notices, says so and calls again.

Headless Chromium (fake microphone: a speech WAV) holds a WebRTC call with a 2-replica CPU-profile app;
the replica holding the call is killed (``ray.kill``), so nothing can tell the browser: no RTP, no ICE
answers, no data-channel close. Chromium turns the connection 'disconnected' within seconds but 'failed'
only after ~30 s; the client takes a call that stays disconnected for its grace as lost (1006), and a
lost live call reconnects - here to the surviving replica, again as a WebRTC call with audio flowing.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from tests.conftest import get_json
from tests.test_browser_e2e import SPEECH_WAV, WAIT_MS, _diagnose, chromium_path
from tests.test_reliability_serve import _replica_actor, deploy_rel_app

pytestmark = pytest.mark.slow

APP, PREFIX = "bizra-rtc-doomed", "/rtc-doomed"

# Every data-state the page goes through, with the time, and the status line shown with it.
RECORD_STATES = """() => {
  window.__states = [];
  const note = () => window.__states.push({state: document.body.dataset.state, at: performance.now(),
    text: document.getElementById('connection').textContent});
  new MutationObserver(note).observe(document.body, {attributes: true, attributeFilter: ['data-state']});
  note();
}"""


@pytest.fixture
def doomed_rtc_server(cpu_server, cpu_args):
    from ray import serve

    base = deploy_rel_app(cpu_server, cpu_args, APP, PREFIX, protected=False)
    _wait_for_replicas(base, 2)
    yield base
    with contextlib.suppress(Exception):
        serve.delete(APP)


def _wait_for_replicas(base: str, count: int, timeout_s: float = 180.0) -> set[str]:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < count:
        assert time.monotonic() < deadline, f"only replicas {seen} answered"
        with contextlib.suppress(Exception):
            seen.add(get_json(f"{base}/api/health", timeout_s=5)["replica"])
        time.sleep(0.2)
    return seen


def _busy_replica(base: str, timeout_s: float = 60.0) -> str:
    """The replica whose slot the call holds (its health shows a slot in use; the other's are all free)."""
    deadline = time.monotonic() + timeout_s
    while True:
        health = get_json(f"{base}/api/health", timeout_s=5)
        if health["slots"]["free"] < health["slots"]["total"]:
            return health["replica"]
        assert time.monotonic() < deadline, "no replica shows the call's slot in use"
        time.sleep(0.1)


def test_browser_call_whose_replica_is_killed_reconnects_to_the_other(doomed_rtc_server: str) -> None:
    import ray

    chromium = chromium_path()
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")
    base = doomed_rtc_server + "/"
    console_errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-audio-capture={SPEECH_WAV}", "--autoplay-policy=no-user-gesture-required"])
        try:
            context = browser.new_context()
            context.grant_permissions(["microphone"])
            page = context.new_page()
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(f"uncaught: {e}"))
            page.goto(base, wait_until="networkidle")
            page.evaluate(RECORD_STATES)
            page.get_by_role("button", name="Connect and talk").click()
            try:
                page.wait_for_selector('body[data-state="connected"]', state="attached", timeout=WAIT_MS)
                page.wait_for_function("() => +document.body.dataset.rtpPacketsReceived > 50", timeout=WAIT_MS)
                assert page.evaluate("() => document.body.dataset.transport") == "webrtc"
                victim = _busy_replica(doomed_rtc_server)
                killed_at = page.evaluate("() => performance.now()")
                ray.kill(_replica_actor(victim), no_restart=True)
                page.wait_for_function(
                    "(t) => window.__states.some((s) => s.at > t && s.state === 'connecting')",
                    arg=killed_at, timeout=WAIT_MS)
                page.wait_for_function(
                    """(t) => {
                        const after = window.__states.filter((s) => s.at > t);
                        return after.some((s) => s.state === 'connected')
                            && document.body.dataset.state === 'connected'
                            && +document.body.dataset.rtpPacketsReceived > 50;
                    }""", arg=killed_at, timeout=WAIT_MS)
            except sync_api.TimeoutError:
                states = page.evaluate("() => window.__states")
                pytest.fail(f"the call did not come back: {_diagnose(page, console_errors)}; states {states}")
            states = page.evaluate("(t) => window.__states.filter((s) => s.at > t)", killed_at)
            transport = page.evaluate("() => document.body.dataset.transport")
            survivor = _busy_replica(doomed_rtc_server)
            page.get_by_role("button", name="Disconnect").click()
            page.wait_for_selector('body[data-state="closed"]', state="attached", timeout=WAIT_MS)
        finally:
            browser.close()

    lost = next(s for s in states if s["state"] == "connecting")
    back = next(s for s in states if s["state"] == "connected")
    print(f"\nreplica {victim} killed: the page said {lost['text']!r} after {(lost['at'] - killed_at) / 1000:.1f} s, "
          f"talked again (WebRTC, replica {survivor}) after {(back['at'] - killed_at) / 1000:.1f} s")
    assert "lost" in lost["text"] and "Reconnecting" in lost["text"], states  # the grace, not ICE's 'failed'
    assert transport == "webrtc" and survivor != victim, (transport, survivor, victim)
    assert not [e for e in console_errors if "Failed to load resource" not in e], console_errors
