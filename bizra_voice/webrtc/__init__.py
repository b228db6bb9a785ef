"""WebRTC transport (aiortc): OpenAI Realtime calls, ``POST /v1/realtime/calls``, on the engine replica.

``calls`` answers the offer and owns one call's lifetime; ``channel`` is the ``oai-events`` data channel as
the socket ``serve/realtime_session.py`` serves; ``media`` converts between RTP audio (48 kHz) and the
engine's 24 kHz frames. The media flows peer to peer with the replica that holds the slot; only the offer and
answer pass through Serve's HTTP proxy.
"""
