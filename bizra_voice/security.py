"""Access control for the WebSocket and REST endpoints (pure: no Ray, no FastAPI).

- **Token** (optional): when a token is configured every ``/api/*`` request must carry it, as the query
  parameter ``token`` (works from a browser address bar and a WebSocket URL), as a WebSocket subprotocol
  ``bizra-token.<token>`` (``new WebSocket(url, ["bizra-token." + token])`` keeps it out of URLs and logs),
  or as ``Authorization: Bearer <token>``. Compared with ``hmac.compare_digest``. Refused: WebSocket
  0x05 + close 4401, REST HTTP 401.
- **Origin allow-list**: a browser request whose ``Origin`` is not the server's own origin, not a
  localhost origin (unless disabled) and not listed in ``allowed_origins`` is refused (close 4403 /
  HTTP 403). Requests without ``Origin`` (non-browser clients) are not origin-checked; the token covers them.
- **Session tickets** (``?session=<id>``, from ``POST /api/sessions``, which needs the token): a WebSocket
  that presents one is origin-checked here but needs no token; the ticket store checks instead that the
  ticket was made under the token this server holds (``token_tag``), so the long-lived token never has to
  be in a WebSocket URL.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

TOKEN_SUBPROTOCOL_PREFIX = "bizra-token."
_TAG_CONTEXT = b"bizra-voice session ticket"  # a token's tag is useless as the token itself
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _origin_key(origin: str) -> str | None:
    """``scheme://host[:port]`` lower-cased with the default port made explicit, or None if unparsable."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname.lower()}:{port}"


def _host_port(host_header: str, scheme: str) -> str | None:
    try:
        parts = urlsplit(f"//{host_header.strip()}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return f"{parts.hostname.lower()}:{port or (443 if scheme == 'https' else 80)}"


@dataclass(frozen=True)
class AccessDenied:
    """Why a request was refused: ``status`` is the HTTP status, ``close_code`` the WebSocket code."""

    message: str
    status: int
    close_code: int


@dataclass(frozen=True)
class AccessPolicy:
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    allow_localhost_origins: bool = True

    @classmethod
    def create(cls, token: str | None = None, token_env: str | None = None,
               allowed_origins: Iterable[str] = (), allow_localhost_origins: bool = True) -> AccessPolicy:
        """``token`` wins over the environment variable ``token_env``; an empty token means no auth."""
        value = token or (os.environ.get(token_env) if token_env else None) or None
        origins = tuple(o for o in (_origin_key(x) if x != "*" else "*" for x in allowed_origins) if o)
        return cls(value, origins, allow_localhost_origins)

    @property
    def auth_required(self) -> bool:
        return self.token is not None

    def presented_token(self, query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
        """The token a request carries (query, subprotocol or bearer header), or None."""
        if query.get("token"):
            return query["token"]
        for proto in offered_subprotocols(headers):
            if proto.startswith(TOKEN_SUBPROTOCOL_PREFIX):
                return proto[len(TOKEN_SUBPROTOCOL_PREFIX):]
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None

    def token_ok(self, presented: str | None) -> bool:
        if self.token is None:
            return True
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8"), self.token.encode("utf-8"))

    def origin_ok(self, origin: str | None, host_header: str | None, scheme: str = "http") -> bool:
        if origin is None:
            return True
        key = _origin_key(origin)
        if key is None:
            return False  # "null" (sandboxed/file pages) and garbage are foreign
        if "*" in self.allowed_origins or key in self.allowed_origins:
            return True
        parts = urlsplit(key)
        if self.allow_localhost_origins and parts.hostname in LOCAL_HOSTS:
            return True
        own = _host_port(host_header, "https" if scheme in ("https", "wss") else "http") if host_header else None
        return own is not None and key.split("://", 1)[1] == own

    def token_tag(self) -> str | None:
        """A keyed digest of the token (None without auth): what a session ticket records, so a ticket made
        under one token is refused by a server holding another, without storing the token itself."""
        if self.token is None:
            return None
        return hmac.new(self.token.encode("utf-8"), _TAG_CONTEXT, "sha256").hexdigest()

    def check(self, query: Mapping[str, str], headers: Mapping[str, str], scheme: str = "http", *,
              ticket: bool = False) -> AccessDenied | None:
        """None when the request may proceed, else why not (origin first: a foreign page learns nothing).
        ``ticket``: the request presents a session ticket, which stands in for the token (see above)."""
        if not self.origin_ok(headers.get("origin"), headers.get("host"), scheme):
            return AccessDenied(f"Origin {headers.get('origin')!r} is not allowed to use this server", 403, 4403)
        if ticket:
            return None
        if not self.token_ok(self.presented_token(query, headers)):
            missing = self.presented_token(query, headers) is None
            return AccessDenied("a valid access token is required" if missing else "the access token is wrong",
                                401, 4401)
        return None


def offered_subprotocols(headers: Mapping[str, str]) -> list[str]:
    raw = headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def token_subprotocol(headers: Mapping[str, str]) -> str | None:
    """The ``bizra-token.*`` subprotocol a browser offered; the server must echo it when accepting."""
    return next((p for p in offered_subprotocols(headers) if p.startswith(TOKEN_SUBPROTOCOL_PREFIX)), None)
