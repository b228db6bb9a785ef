"""One replica's WebRTC calls, and the hang-ups for them that Serve's proxy routes to another replica.

``POST /v1/realtime/calls/<id>/hangup`` is routed on its own, like every HTTP request, so it may reach a
replica that does not hold the call. The replicas share the :class:`~bizra_voice.webrtc.directory.
CallDirectory` hosted in the ``SessionTickets`` deployment; :class:`CallRelay` is this replica's side:

- ``opened`` registers a call before its answer goes out (so a hang-up can never outrun it), ``ended``
  forgets it;
- ``hang_up`` ends a call held here at once, else asks the directory, which relays it to the owner;
- while this replica holds calls, one task long-polls the directory for hang-ups asked elsewhere and ends
  them (the poll is also this replica's lease: a killed replica's calls are soon "unknown", not a wait).

Without the directory (tickets not deployed, or not answering) calls work as before; only a hang-up that
lands on the wrong replica cannot reach its call, and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from enum import Enum
from typing import Any

from starlette.responses import JSONResponse, Response

from bizra_voice.webrtc.directory import HangupResult

log = logging.getLogger("ray.serve")

HANDLE_TIMEOUT_S = 5.0  # a directory call is microseconds of work; this only bounds a deployment that is gone
POLL_S = 10.0  # each long poll renews the lease (CallDirectory.lease_s = 30 s: three polls)
RELAY_WAIT_S = 5.0  # how long a relayed hang-up waits for the owner to confirm the end
RELAYED_HEADER = "X-Bizra-Hangup"  # "here" or "relayed": where the hang-up was carried out


class Hangup(str, Enum):
    HERE = "here"  # the call was on this replica and is ended
    RELAYED = "relayed"  # another replica held it and confirmed the end
    ASKED = "asked"  # its owner was asked but has not confirmed yet
    UNKNOWN = "unknown"  # no live replica holds such a call
    UNAVAILABLE = "unavailable"  # not here, and the directory did not answer


_FROM_DIRECTORY = {HangupResult.ENDED.value: Hangup.RELAYED, HangupResult.ASKED.value: Hangup.ASKED,
                   HangupResult.UNKNOWN.value: Hangup.UNKNOWN}


class CallRelay:
    def __init__(self, directory: Any | None, replica: str, poll_s: float = POLL_S) -> None:
        self.directory, self.replica, self.poll_s = directory, replica, poll_s
        self.calls: dict[str, Any] = {}  # call id -> RealtimeCall (webrtc/calls.py), held on this replica
        self._poller: asyncio.Task | None = None
        self._chores: set[asyncio.Task] = set()

    async def opened(self, call: Any) -> None:
        """``call`` is served here from now on; bounded, so a directory that is gone delays no answer long."""
        self.calls[call.call_id] = call
        if self.directory is None:
            return
        try:
            await asyncio.wait_for(self.directory.register_call.remote(call.call_id, self.replica),
                                   HANDLE_TIMEOUT_S)
        except Exception as exc:  # the call works; a hang-up landing elsewhere will not find it until a poll
            log.warning("call %s not registered in the call directory (%s)", call.call_id, type(exc).__name__)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())

    def ended(self, call_id: str) -> None:
        if self.calls.pop(call_id, None) is not None and self.directory is not None:
            self._chore(self.directory.forget_call.remote(call_id))

    async def hang_up(self, call_id: str) -> Hangup:
        call = self.calls.get(call_id)
        if call is not None:
            await call.hang_up()
            return Hangup.HERE
        if self.directory is None:
            return Hangup.UNKNOWN
        try:
            answer = await asyncio.wait_for(self.directory.hang_up_call.remote(call_id, RELAY_WAIT_S),
                                            RELAY_WAIT_S + HANDLE_TIMEOUT_S)
        except Exception as exc:
            log.warning("hang-up of call %s not relayed: the call directory did not answer (%s)",
                        call_id, type(exc).__name__)
            return Hangup.UNAVAILABLE
        return _FROM_DIRECTORY.get(answer, Hangup.UNKNOWN)

    async def _poll(self) -> None:
        """While calls are held here: end those whose hang-up was asked on another replica."""
        failures = 0
        while self.calls:
            try:
                asked = await asyncio.wait_for(
                    self.directory.next_hangups.remote(self.replica, list(self.calls), self.poll_s),
                    self.poll_s + HANDLE_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # restarting: back off, the next poll re-registers what is held
                failures += 1
                if failures == 1:
                    log.warning("call directory poll failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(min(5.0, 0.25 * 2 ** failures))
                continue
            failures = 0
            for call_id in asked:
                call = self.calls.get(call_id)
                if call is not None:
                    log.info("call %s hung up through another replica", call_id)
                    await call.hang_up()
                else:  # it ended meanwhile: tell the asker
                    self._chore(self.directory.forget_call.remote(call_id))

    def _chore(self, response: Any) -> None:
        async def settle() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(response, HANDLE_TIMEOUT_S)

        task = asyncio.ensure_future(settle())
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)


def hangup_response(outcome: Hangup, call_id: str) -> Response:
    """The HTTP answer to ``POST /v1/realtime/calls/<id>/hangup``."""
    if outcome in (Hangup.HERE, Hangup.RELAYED):
        return Response(status_code=200, headers={RELAYED_HEADER: outcome.value})
    if outcome is Hangup.ASKED:
        return JSONResponse({"status": "hanging_up", "message": f"The replica holding call {call_id!r} was "
                             "asked to end it and has not confirmed yet; the call ends within seconds."},
                            status_code=202, headers={RELAYED_HEADER: outcome.value})
    if outcome is Hangup.UNAVAILABLE:
        return JSONResponse({"error": {"type": "server_error", "code": "call_directory_unavailable",
                                       "message": f"Call {call_id!r} is held by another replica, and the call "
                                       "directory did not answer; try again in a few seconds, or close the "
                                       "peer connection to end the call."}},
                            status_code=503, headers={"Retry-After": "2"})
    return JSONResponse({"error": {"type": "invalid_request_error", "code": "call_not_found",
                                   "message": f"No call {call_id!r}: it ended, or it never existed."}},
                        status_code=404)
