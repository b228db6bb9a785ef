"""The call directory (webrtc/directory.py) and a replica's relay (serve/call_relay.py), without Ray.

The relay is given the real ``SessionTickets`` deployment class called in-process through
``ScriptedHandle`` (the handle's ``.method.remote(...)`` shape), so both sides of a relayed hang-up are the
product's code: replica A asks, the directory queues, replica B's poll ends its call, A hears "ended".
"""

from __future__ import annotations

import asyncio

import pytest

from bizra_voice.serve.call_relay import Hangup, CallRelay, hangup_response
from bizra_voice.webrtc.directory import CallDirectory, HangupResult
from test_session_tickets import ScriptedHandle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_hang_up_is_relayed_to_the_owner_and_the_asker_hears_it_ended():
    async def scenario():
        directory = CallDirectory()
        assert directory.register("rtc_1", "B")
        poll = asyncio.ensure_future(directory.next_hangups("B", ["rtc_1"], wait_s=30))
        await asyncio.sleep(0)
        asking = asyncio.ensure_future(directory.hang_up("rtc_1", wait_s=30))
        asked = await asyncio.wait_for(poll, 5)  # the owner is woken at once, not at its poll's end
        assert asked == ["rtc_1"] and not asking.done()
        directory.forget("rtc_1")  # the owner ended the call
        return await asyncio.wait_for(asking, 5), directory.calls

    result, calls = asyncio.run(scenario())
    assert result is HangupResult.ENDED and calls == 0


def test_an_owner_that_does_not_confirm_gives_asked_and_an_unknown_call_gives_unknown():
    async def scenario():
        directory = CallDirectory()
        directory.register("rtc_1", "B")
        asked = await directory.hang_up("rtc_1", wait_s=0.05)
        queued = await directory.next_hangups("B", ["rtc_1"], wait_s=5)  # queued for the owner's next poll
        unknown = await directory.hang_up("rtc_nothing", wait_s=5)
        return asked, queued, unknown

    assert asyncio.run(scenario()) == (HangupResult.ASKED, ["rtc_1"], HangupResult.UNKNOWN)


def test_a_replica_that_stops_polling_loses_its_calls_after_the_lease():
    clock = Clock()

    async def scenario():
        directory = CallDirectory(lease_s=30, clock=clock)
        directory.register("rtc_dead", "A")
        directory.register("rtc_live", "B")
        clock.now += 20
        await directory.next_hangups("B", ["rtc_live"], wait_s=0)  # B renews, A (killed) does not
        clock.now += 20
        dead = await directory.hang_up("rtc_dead", wait_s=0.05)
        live = await directory.hang_up("rtc_live", wait_s=0.05)
        return dead, live, directory.calls

    assert asyncio.run(scenario()) == (HangupResult.UNKNOWN, HangupResult.ASKED, 1)


def test_a_poll_rebuilds_a_directory_that_restarted_and_drops_calls_the_owner_no_longer_holds():
    async def scenario():
        directory = CallDirectory()  # a fresh table: the deployment restarted
        await directory.next_hangups("B", ["rtc_1", "rtc_2"], wait_s=0)
        assert directory.calls == 2
        await directory.next_hangups("B", ["rtc_2"], wait_s=0)  # rtc_1 ended while its forget was lost
        return await directory.hang_up("rtc_1", wait_s=0.05), directory.calls

    assert asyncio.run(scenario()) == (HangupResult.UNKNOWN, 1)


def test_a_full_table_refuses_the_registration_but_keeps_known_calls():
    directory = CallDirectory(max_calls=2)
    assert directory.register("a", "R") and directory.register("b", "R")
    assert not directory.register("c", "R")
    assert directory.register("a", "S")  # a call moving owner is not a new entry
    assert directory.calls == 2


class FakeCall:
    """A call's hang-up surface: ``hang_up`` ends it, and its server forgets it (as serve_call does)."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.relay: CallRelay | None = None
        self.hung_up = asyncio.Event()

    async def hang_up(self) -> None:
        self.hung_up.set()
        asyncio.get_running_loop().call_soon(self.relay.ended, self.call_id)


def test_two_relays_sharing_the_real_directory_deployment_end_a_call_held_by_the_other():
    from bizra_voice.serve.tickets import SessionTickets

    async def scenario():
        directory = ScriptedHandle(SessionTickets.func_or_class(60.0, 10))
        a, b = CallRelay(directory, "A", poll_s=30), CallRelay(directory, "B", poll_s=30)
        call = FakeCall("rtc_b")
        call.relay = b
        await b.opened(call)
        await asyncio.sleep(0.05)  # B's poll is waiting
        outcome = await asyncio.wait_for(a.hang_up("rtc_b"), 10)
        await asyncio.wait_for(call.hung_up.wait(), 1)
        after = await a.hang_up("rtc_b")  # gone everywhere now
        here = FakeCall("rtc_a")
        here.relay = a
        await a.opened(here)
        local = await a.hang_up("rtc_a")
        await asyncio.sleep(0.01)  # the hang-ups' ends run
        await asyncio.gather(*a._chores, *b._chores)  # and their forgets are sent
        for relay in (a, b):
            if relay._poller is not None:
                relay._poller.cancel()
        return outcome, after, local, b.calls

    outcome, after, local, left = asyncio.run(scenario())
    assert (outcome, after, local, left) == (Hangup.RELAYED, Hangup.UNKNOWN, Hangup.HERE, {})


def test_without_a_directory_a_call_elsewhere_is_not_found_and_an_unanswering_one_is_503(monkeypatch):
    import bizra_voice.serve.call_relay as relay_module

    monkeypatch.setattr(relay_module, "RELAY_WAIT_S", 0.01)
    monkeypatch.setattr(relay_module, "HANDLE_TIMEOUT_S", 0.01)

    class Silent:
        class _Method:
            def remote(self, *args):
                return asyncio.sleep(3600)

        def __getattr__(self, name):
            return self._Method()

    async def scenario():
        alone = await CallRelay(None, "A").hang_up("rtc_x")
        silent = await CallRelay(Silent(), "A").hang_up("rtc_x")
        return alone, silent

    alone, silent = asyncio.run(scenario())
    assert alone is Hangup.UNKNOWN and silent is Hangup.UNAVAILABLE
    assert hangup_response(silent, "rtc_x").status_code == 503
    assert hangup_response(Hangup.ASKED, "rtc_x").status_code == 202
    assert hangup_response(Hangup.RELAYED, "rtc_x").headers["x-bizra-hangup"] == "relayed"
    assert hangup_response(Hangup.UNKNOWN, "rtc_x").status_code == 404


@pytest.mark.parametrize("outcome", list(Hangup))
def test_every_outcome_has_an_answer(outcome):
    assert hangup_response(outcome, "rtc_x").status_code in (200, 202, 404, 503)
