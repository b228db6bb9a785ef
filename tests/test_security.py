"""Access policy (token, Origin allow-list) and the self-signed TLS certificate (pure, no Ray)."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from bizra_voice.security import AccessPolicy, token_subprotocol
from bizra_voice.tls import make_self_signed

POLICY = AccessPolicy.create(token="s3cret", allowed_origins=["https://voice.example"])


def headers(**kw: str) -> dict[str, str]:
    return {k.replace("_", "-"): v for k, v in kw.items()}


def test_token_sources_and_refusals():
    ok = ({"token": "s3cret"}, {}), ({}, headers(sec_websocket_protocol="foo, bizra-token.s3cret")), \
        ({}, headers(authorization="Bearer s3cret"))
    for query, hdrs in ok:
        assert POLICY.check(query, hdrs) is None, (query, hdrs)
    wrong = POLICY.check({"token": "s3creT"}, {})
    assert wrong is not None and wrong.status == 401 and wrong.close_code == 4401 and "wrong" in wrong.message
    missing = POLICY.check({}, {})
    assert missing is not None and missing.close_code == 4401 and "required" in missing.message
    assert AccessPolicy.create().check({}, {}) is None  # no token configured: open
    assert token_subprotocol(headers(sec_websocket_protocol="a, bizra-token.x")) == "bizra-token.x"


def test_token_from_environment(monkeypatch):
    monkeypatch.setenv("BIZRA_TEST_TOKEN", "from-env")
    policy = AccessPolicy.create(token_env="BIZRA_TEST_TOKEN")
    assert policy.check({"token": "from-env"}, {}) is None
    assert policy.check({"token": "nope"}, {}) is not None
    monkeypatch.setenv("BIZRA_TEST_TOKEN", "")
    assert not AccessPolicy.create(token_env="BIZRA_TEST_TOKEN").auth_required


@pytest.mark.parametrize(("origin", "host", "allowed"), [
    (None, "127.0.0.1:8000", True),  # non-browser client
    ("http://127.0.0.1:8000", "127.0.0.1:8000", True),  # same origin
    ("https://10.0.0.5:8443", "10.0.0.5:8443", True),  # same origin over TLS
    ("http://localhost:3000", "10.0.0.5:8000", True),  # localhost dev page
    ("https://voice.example", "10.0.0.5:8000", True),  # allow-listed (default port 443)
    ("https://voice.example:444", "10.0.0.5:8000", False),
    ("https://evil.example", "10.0.0.5:8000", False),
    ("http://10.0.0.5:8001", "10.0.0.5:8000", False),  # other port = other origin
    ("null", "127.0.0.1:8000", False),
])
def test_origin_allow_list(origin, host, allowed):
    hdrs = {"host": host} | ({"origin": origin} if origin else {})
    denied = POLICY.check({"token": "s3cret"}, hdrs, scheme="https" if ":8443" in host else "http")
    assert (denied is None) == allowed
    if not allowed:
        assert denied.status == 403 and denied.close_code == 4403


def test_localhost_origins_can_be_disabled():
    strict = AccessPolicy.create(allow_localhost_origins=False)
    assert strict.check({}, {"origin": "http://localhost:3000", "host": "10.0.0.5:8000"}) is not None


def test_self_signed_certificate_serves_tls(tmp_path):
    files = make_self_signed(tmp_path / "tls", ["localhost", "127.0.0.1"])
    assert (files.key.stat().st_mode & 0o777) == 0o600

    async def handshake() -> bytes:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(files.cert, files.key)

        async def handle(reader, writer):
            writer.write(b"hello over tls")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        client_ctx = ssl.create_default_context(cafile=str(files.cert))  # hostname checked: localhost
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                       server_hostname="localhost")
        data = await reader.read()
        writer.close()
        server.close()
        return data

    assert asyncio.run(handshake()) == b"hello over tls"
    strict = ssl.create_default_context()  # the system store does not trust it: self-signed
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(_connect_untrusted(files, strict))


async def _connect_untrusted(files, ctx) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(files.cert, files.key)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    finally:
        server.close()


def test_serve_http_options_accept_the_files(tmp_path):
    from ray.serve.config import HTTPOptions

    files = make_self_signed(tmp_path, ["localhost"])
    opts = HTTPOptions(host="0.0.0.0", port=8443, ssl_keyfile=str(files.key), ssl_certfile=str(files.cert))
    assert opts.ssl_certfile == str(files.cert) and opts.ssl_keyfile == str(files.key)


def test_cli_make_cert(tmp_path, capsys):
    from bizra_voice.cli import main

    assert main(["make-cert", str(tmp_path / "c"), "--host", "192.168.1.20"]) == 0
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((tmp_path / "c" / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "192.168.1.20" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert "localhost" in san.get_values_for_type(x509.DNSName)
