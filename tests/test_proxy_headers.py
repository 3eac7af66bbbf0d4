"""sleipnir.middleware.proxy_headers: trust list, X-Forwarded-*, RFC 7239 Forwarded, middleware."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import httpx
import pytest

from sleipnir.middleware import proxy_headers
from sleipnir.middleware.proxy_headers import ProxyHeadersMiddleware, TrustedProxies
from sleipnir.types import Message, Receive, Scope, Send

TRUSTED = "127.0.0.1, 10.0.0.0/8, ::1, 2001:db8::/32, proxy-literal"
SERVER = ("192.0.2.1", 8000)
PEER = ("127.0.0.1", 41000)


def make_scope(
    peer: tuple[str, int] | None = PEER,
    headers: list[tuple[str, str]] | None = None,
    scope_type: str = "http",
) -> dict[str, Any]:
    return {
        "type": scope_type,
        "scheme": "ws" if scope_type == "websocket" else "http",
        "client": peer,
        "server": SERVER,
        "headers": [(b"host", b"internal:8000")]
        + [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers or []],
    }


class Expect(NamedTuple):
    client: tuple[str, int] | None = PEER
    scheme: str = "http"
    server: tuple[str, int] = SERVER
    host: str = "internal:8000"


def observed(scope: dict[str, Any]) -> Expect:
    hosts = [value.decode() for name, value in scope["headers"] if name == b"host"]
    assert len(hosts) == 1, hosts
    return Expect(scope["client"], scope["scheme"], scope["server"], hosts[0])


XFF = "x-forwarded-for"
XFP = "x-forwarded-proto"
XFH = "x-forwarded-host"
XFPORT = "x-forwarded-port"
FWD = "forwarded"

# (id, trusted, peer, headers, expected) for http scopes
CASES: list[tuple[str, str, tuple[str, int] | None, list[tuple[str, str]], Expect]] = [
    # --- trust decisions on the direct peer
    ("untrusted-peer", TRUSTED, ("203.0.113.9", 1), [(XFF, "1.2.3.4"), (XFP, "https")],
     Expect(client=("203.0.113.9", 1))),
    ("no-headers", TRUSTED, PEER, [], Expect()),
    ("ipv6-peer", TRUSTED, ("::1", 5), [(XFF, "1.2.3.4")], Expect(client=("1.2.3.4", 0))),
    ("ipv6-peer-other-spelling", TRUSTED, ("0:0::1", 5), [(XFF, "1.2.3.4")],
     Expect(client=("1.2.3.4", 0))),
    ("ipv4-mapped-peer", TRUSTED, ("::ffff:10.1.2.3", 5), [(XFF, "1.2.3.4")],
     Expect(client=("1.2.3.4", 0))),
    ("cidr-peer", TRUSTED, ("10.20.30.40", 5), [(XFF, "1.2.3.4")], Expect(client=("1.2.3.4", 0))),
    ("ipv6-cidr-peer", TRUSTED, ("2001:db8::42", 5), [(XFF, "1.2.3.4")],
     Expect(client=("1.2.3.4", 0))),
    ("literal-peer", TRUSTED, ("proxy-literal", 0), [(XFF, "1.2.3.4")],
     Expect(client=("1.2.3.4", 0))),
    ("no-peer-untrusted", TRUSTED, None, [(XFF, "1.2.3.4")], Expect(client=None)),
    ("no-peer-star", "*", None, [(XFF, "1.2.3.4")], Expect(client=("1.2.3.4", 0))),
    ("star-takes-leftmost", "*", ("198.51.100.1", 1), [(XFF, "6.6.6.6, 1.2.3.4")],
     Expect(client=("6.6.6.6", 0))),
    ("star-in-list", "10.0.0.1, *", ("198.51.100.1", 1), [(XFF, "1.2.3.4")],
     Expect(client=("1.2.3.4", 0))),
    ("host-bits-network", "10.9.9.9/8", ("10.1.1.1", 1), [(XFF, "1.2.3.4")],
     Expect(client=("1.2.3.4", 0))),
    # --- X-Forwarded-For walk
    ("xff-single", TRUSTED, PEER, [(XFF, "1.2.3.4")], Expect(client=("1.2.3.4", 0))),
    ("xff-skips-trusted-hops", TRUSTED, PEER, [(XFF, "1.2.3.4, 10.1.1.1, 10.2.2.2")],
     Expect(client=("1.2.3.4", 0))),
    ("xff-spoofed-left-entries", TRUSTED, PEER, [(XFF, "6.6.6.6, 7.7.7.7, 1.2.3.4")],
     Expect(client=("1.2.3.4", 0))),
    ("xff-spoofed-trusted-looking", TRUSTED, PEER, [(XFF, "127.0.0.1, 1.2.3.4")],
     Expect(client=("1.2.3.4", 0))),
    ("xff-all-trusted-leftmost", TRUSTED, PEER, [(XFF, "10.0.0.5, 10.0.0.6")],
     Expect(client=("10.0.0.5", 0))),
    ("xff-multiple-lines", TRUSTED, PEER, [(XFF, "6.6.6.6"), (XFF, "1.2.3.4")],
     Expect(client=("1.2.3.4", 0))),
    ("xff-port", TRUSTED, PEER, [(XFF, "1.2.3.4:5678")], Expect(client=("1.2.3.4", 5678))),
    ("xff-ipv6-bracket-port", TRUSTED, PEER, [(XFF, "[2a00::1]:443")],
     Expect(client=("2a00::1", 443))),
    ("xff-ipv6-bare", TRUSTED, PEER, [(XFF, "2a00::1")], Expect(client=("2a00::1", 0))),
    ("xff-ipv6-trusted-hop", TRUSTED, PEER, [(XFF, "1.2.3.4, [2001:db8::1]:80")],
     Expect(client=("1.2.3.4", 0))),
    ("xff-unknown", TRUSTED, PEER, [(XFF, "unknown")], Expect(client=None)),
    ("xff-tabs-spaces", TRUSTED, PEER, [(XFF, "\t1.2.3.4 ,\t10.0.0.1 ")],
     Expect(client=("1.2.3.4", 0))),
    # --- X-Forwarded-For garbage: ignored, never raises
    ("xff-garbage", TRUSTED, PEER, [(XFF, "not an ip")], Expect()),
    ("xff-empty", TRUSTED, PEER, [(XFF, "")], Expect()),
    ("xff-hostname", TRUSTED, PEER, [(XFF, "client.example.com")], Expect()),
    ("xff-garbage-at-walk-stop", TRUSTED, PEER, [(XFF, "1.2.3.4, bogus, 10.0.0.1")], Expect()),
    ("xff-garbage-left-of-client", TRUSTED, PEER, [(XFF, "bogus!!, 1.2.3.4")],
     Expect(client=("1.2.3.4", 0))),
    ("xff-port-out-of-range", TRUSTED, PEER, [(XFF, "1.2.3.4:70000")], Expect()),
    ("xff-port-not-numeric", TRUSTED, PEER, [(XFF, "1.2.3.4:http")], Expect()),
    ("xff-bad-ipv4", TRUSTED, PEER, [(XFF, "1.2.3.256")], Expect()),
    ("xff-bracket-unclosed", TRUSTED, PEER, [(XFF, "[2a00::1")], Expect()),
    ("xff-non-latin1-safe", TRUSTED, PEER, [(XFF, "\xff\xfe")], Expect()),
    # --- X-Forwarded-Proto
    ("proto-https", TRUSTED, PEER, [(XFP, "https")], Expect(scheme="https")),
    ("proto-case", TRUSTED, PEER, [(XFP, " HTTPS ")], Expect(scheme="https")),
    ("proto-wss-on-http", TRUSTED, PEER, [(XFP, "wss")], Expect(scheme="https")),
    ("proto-invalid", TRUSTED, PEER, [(XFP, "javascript")], Expect()),
    ("proto-list-rightmost", TRUSTED, PEER, [(XFP, "https, http")], Expect(scheme="http")),
    ("proto-untrusted", TRUSTED, ("8.8.8.8", 1), [(XFP, "https")], Expect(client=("8.8.8.8", 1))),
    # --- X-Forwarded-Host / -Port
    ("host", TRUSTED, PEER, [(XFH, "example.com")],
     Expect(server=("example.com", 80), host="example.com")),
    ("host-https-default-port", TRUSTED, PEER, [(XFP, "https"), (XFH, "example.com")],
     Expect(scheme="https", server=("example.com", 443), host="example.com")),
    ("host-with-port", TRUSTED, PEER, [(XFH, "example.com:8443")],
     Expect(server=("example.com", 8443), host="example.com:8443")),
    ("host-ipv6", TRUSTED, PEER, [(XFH, "[2001:db8::5]:8080")],
     Expect(server=("2001:db8::5", 8080), host="[2001:db8::5]:8080")),
    ("host-and-port", TRUSTED, PEER, [(XFH, "example.com"), (XFPORT, "8443")],
     Expect(server=("example.com", 8443), host="example.com:8443")),
    ("host-and-default-port", TRUSTED, PEER, [(XFP, "https"), (XFH, "a.test"), (XFPORT, "443")],
     Expect(scheme="https", server=("a.test", 443), host="a.test")),
    ("host-list-rightmost", TRUSTED, PEER, [(XFH, "evil.test, good.test")],
     Expect(server=("good.test", 80), host="good.test")),
    ("host-invalid", TRUSTED, PEER, [(XFH, "exa mple.com")], Expect()),
    ("host-injection", TRUSTED, PEER, [(XFH, "a.test/path")], Expect()),
    ("host-bad-port", TRUSTED, PEER, [(XFH, "a.test:99999")], Expect()),
    ("host-with-bad-port-header", TRUSTED, PEER, [(XFH, "a.test"), (XFPORT, "eighty")],
     Expect(server=("a.test", 80), host="a.test")),
    ("port-alone", TRUSTED, PEER, [(XFPORT, "9000")], Expect(server=("192.0.2.1", 9000))),
    ("port-invalid", TRUSTED, PEER, [(XFPORT, "-1")], Expect()),
    ("port-too-big", TRUSTED, PEER, [(XFPORT, "65536")], Expect()),
    # --- RFC 7239 Forwarded
    ("fwd-basic", TRUSTED, PEER, [(FWD, "for=1.2.3.4;proto=https;host=example.com")],
     Expect(("1.2.3.4", 0), "https", ("example.com", 443), "example.com")),
    ("fwd-quoted-ipv6-port", TRUSTED, PEER, [(FWD, 'for="[2001:db8:cafe::17]:4711"')],
     Expect(client=("2001:db8:cafe::17", 4711))),
    ("fwd-quoted-ipv4-port", TRUSTED, PEER, [(FWD, 'for="192.0.2.43:47011"')],
     Expect(client=("192.0.2.43", 47011))),
    ("fwd-obfuscated", TRUSTED, PEER, [(FWD, "for=_hidden")], Expect(client=("_hidden", 0))),
    ("fwd-obfuscated-port", TRUSTED, PEER, [(FWD, 'for="_hidden:_p0rt"')],
     Expect(client=("_hidden", 0))),
    ("fwd-ipv4-obfuscated-port", TRUSTED, PEER, [(FWD, 'for="1.2.3.4:_x"')],
     Expect(client=("1.2.3.4", 0))),
    ("fwd-unknown", TRUSTED, PEER, [(FWD, "for=unknown;proto=https")],
     Expect(client=None, scheme="https")),
    ("fwd-case-insensitive-names", TRUSTED, PEER, [(FWD, "For=1.2.3.4;PROTO=https")],
     Expect(client=("1.2.3.4", 0), scheme="https")),
    ("fwd-list-spoofed-left", TRUSTED, PEER, [(FWD, "for=6.6.6.6;proto=http, for=1.2.3.4")],
     Expect(client=("1.2.3.4", 0))),
    ("fwd-chain-uses-client-element", TRUSTED, PEER,
     [(FWD, "for=1.2.3.4;proto=https;host=a.test, for=10.0.0.2;proto=http;host=lb.internal")],
     Expect(("1.2.3.4", 0), "https", ("a.test", 443), "a.test")),
    ("fwd-all-trusted-leftmost", TRUSTED, PEER, [(FWD, "for=10.0.0.7, for=10.0.0.8")],
     Expect(client=("10.0.0.7", 0))),
    ("fwd-multiple-lines", TRUSTED, PEER, [(FWD, "for=6.6.6.6"), (FWD, "for=1.2.3.4")],
     Expect(client=("1.2.3.4", 0))),
    ("fwd-whitespace-empty-elements", TRUSTED, PEER, [(FWD, " , for=1.2.3.4 ; proto=https ,, ")],
     Expect(client=("1.2.3.4", 0), scheme="https")),
    ("fwd-quoted-pair", TRUSTED, PEER, [(FWD, r'for=1.2.3.4;host="ex\ample.test"')],
     Expect(("1.2.3.4", 0), "http", ("example.test", 80), "example.test")),
    ("fwd-by-and-extension-ignored", TRUSTED, PEER, [(FWD, "for=1.2.3.4;by=10.0.0.1;ext=x")],
     Expect(client=("1.2.3.4", 0))),
    ("fwd-no-for", TRUSTED, PEER, [(FWD, "proto=https")], Expect(scheme="https")),
    ("fwd-no-for-stops-walk", TRUSTED, PEER, [(FWD, "for=6.6.6.6, proto=https")],
     Expect(scheme="https")),
    ("fwd-bad-proto-ignored", TRUSTED, PEER, [(FWD, "for=1.2.3.4;proto=gopher")],
     Expect(client=("1.2.3.4", 0))),
    ("fwd-bad-host-ignored", TRUSTED, PEER, [(FWD, 'for=1.2.3.4;host="a b"')],
     Expect(client=("1.2.3.4", 0))),
    ("fwd-garbage-left-of-client", TRUSTED, PEER, [(FWD, "for=bogus, for=1.2.3.4")],
     Expect(client=("1.2.3.4", 0))),
    # --- Forwarded precedence and fallback
    # A proxy that sets X-Forwarded-* passes a client's Forwarded through: it must not win.
    ("xff-wins-over-spoofed-fwd", TRUSTED, PEER,
     [(XFF, "5.6.7.8"), (XFP, "https"), (FWD, "for=1.2.3.4"), (XFH, "x.test")],
     Expect(client=("5.6.7.8", 0), scheme="https", server=("x.test", 443), host="x.test")),
    ("fwd-unclosed-quote-ignored", TRUSTED, PEER, [(FWD, 'for="1.2.3.4')], Expect()),
    ("fwd-duplicate-param-ignored", TRUSTED, PEER, [(FWD, "for=1.2.3.4;for=6.6.6.6")], Expect()),
    ("fwd-bad-node-ignored", TRUSTED, PEER, [(FWD, "for=example.com")], Expect()),
    ("fwd-unquoted-ipv6-invalid", TRUSTED, PEER, [(FWD, "for=[::1]")], Expect()),
    ("fwd-junk-after-value", TRUSTED, PEER, [(FWD, "for=1.2.3.4 x")], Expect()),
    ("fwd-space-in-name", TRUSTED, PEER, [(FWD, "fo r=1.2.3.4")], Expect()),
    ("fwd-space-before-equals", TRUSTED, PEER, [(FWD, "for =1.2.3.4")], Expect()),
    ("fwd-double-equals", TRUSTED, PEER, [(FWD, "for=1.2.3.4=5")], Expect()),
    ("fwd-bad-token-char", TRUSTED, PEER, [(FWD, "for=1.2.3.4;host=a/b")], Expect()),
    ("fwd-missing-value", TRUSTED, PEER, [(FWD, "for=")], Expect()),
    ("fwd-empty", TRUSTED, PEER, [(FWD, "")], Expect()),
    ("fwd-control-char", TRUSTED, PEER, [(FWD, 'for="1.2.3.4\x01"')], Expect()),
    ("fwd-port-out-of-range", TRUSTED, PEER, [(FWD, 'for="1.2.3.4:99999"')], Expect()),
    ("fwd-untrusted-peer", TRUSTED, ("8.8.8.8", 2), [(FWD, "for=1.2.3.4;proto=https")],
     Expect(client=("8.8.8.8", 2))),
]  # fmt: skip


@pytest.mark.parametrize(
    ("trusted", "peer", "headers", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_apply(
    trusted: str,
    peer: tuple[str, int] | None,
    headers: list[tuple[str, str]],
    expected: Expect,
) -> None:
    scope = make_scope(peer, headers)
    TrustedProxies(trusted).apply(scope)
    assert observed(scope) == expected


@pytest.mark.parametrize(
    ("proto", "scheme"),
    [("https", "wss"), ("http", "ws"), ("wss", "wss"), ("ws", "ws"), ("ftp", "ws")],
)
@pytest.mark.parametrize("header", [XFP, FWD])
def test_websocket_schemes(proto: str, scheme: str, header: str) -> None:
    value = f"proto={proto}" if header == FWD else proto
    scope = make_scope(headers=[(header, value)], scope_type="websocket")
    TrustedProxies(TRUSTED).apply(scope)
    assert scope["scheme"] == scheme


def test_websocket_default_port_from_scheme() -> None:
    scope = make_scope(headers=[(XFP, "https"), (XFH, "a.test")], scope_type="websocket")
    TrustedProxies(TRUSTED).apply(scope)
    assert (scope["scheme"], scope["server"]) == ("wss", ("a.test", 443))


def test_host_rewrite_builds_a_new_header_list() -> None:
    scope = make_scope(headers=[(XFH, "a.test"), ("accept", "*/*")])
    original = scope["headers"]
    snapshot = list(original)
    TrustedProxies(TRUSTED).apply(scope)
    assert original == snapshot
    assert scope["headers"] == [
        (b"x-forwarded-host", b"a.test"),
        (b"accept", b"*/*"),
        (b"host", b"a.test"),
    ]


def test_host_added_when_request_had_none() -> None:
    scope = make_scope(headers=[(XFH, "a.test")])
    scope["headers"] = [(b"x-forwarded-host", b"a.test")]
    TrustedProxies(TRUSTED).apply(scope)
    assert (b"host", b"a.test") in scope["headers"]


def test_apply_trusted_skips_the_peer_check() -> None:
    scope = make_scope(peer=("8.8.8.8", 1), headers=[(XFF, "1.2.3.4")])
    proxies = TrustedProxies(TRUSTED)
    proxies.apply(scope)
    assert scope["client"] == ("8.8.8.8", 1)
    proxies.apply_trusted(scope)
    assert scope["client"] == ("1.2.3.4", 0)


def test_headers_untouched_without_forwarding_headers() -> None:
    scope = make_scope(headers=[("accept", "*/*")])
    headers = scope["headers"]
    TrustedProxies(TRUSTED).apply(scope)
    assert scope["headers"] is headers


FORWARDED_SAMPLES = [
    "for=1.2.3.4",
    "For=1.2.3.4;Proto=https;HOST=a.test",
    " for=1.2.3.4 ; proto=https , for=_x ,, ",
    "for=1.2.3.4;;proto=http,",
    "for=a;for=b",
    "for=",
    "=x",
    "for",
    "for=a b",
    "fo r=a",
    "for =a",
    "for= a",
    "for=a=b",
    "for=a;by=b;ext=c, for=d",
    "for=\x01",
    "for=a/b",
    "",
    " , ; ",
]


@pytest.mark.parametrize("value", FORWARDED_SAMPLES)
def test_forwarded_fast_path_matches_general_tokenizer(value: str) -> None:
    assert proxy_headers._parse_forwarded(value) == proxy_headers._parse_forwarded_quoted(value)


# --------------------------------------------------------------------------- trust list


@pytest.mark.parametrize(
    ("entries", "host", "trusted"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "127.0.0.2", False),
        ("127.0.0.1", None, False),
        ("127.0.0.1", "", False),
        ("*", None, True),
        ("*", "anything", True),
        ("::1", "0000::0001", True),
        ("::ffff:10.0.0.1", "::ffff:10.0.0.1", True),
        ("10.0.0.0/8", "::ffff:10.2.3.4", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("fd00::/8", "fd12::1", True),
        ("fd00::/8", "10.0.0.1", False),
        ("unix:/run/app.sock", "unix:/run/app.sock", True),
        ("unix:/run/app.sock", "unix:/run/other.sock", False),
        ("not/a/network", "not/a/network", True),
        ("127.0.0.1", "x" * 300, False),
        (" 127.0.0.1 ,, ::1 ", "::1", True),
        (["127.0.0.1", " 10.0.0.0/8 "], "10.9.8.7", True),
        (["*"], "8.8.8.8", True),
        ([], "127.0.0.1", False),
    ],
)
def test_is_trusted(entries: str | list[str], host: str | None, trusted: bool) -> None:
    proxies = TrustedProxies(entries)
    assert proxies.is_trusted(host) is trusted
    assert proxies.is_trusted(host) is trusted  # cached answer is the same


# --------------------------------------------------------------------------- middleware


def recording_app(seen: list[Scope]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(dict(scope))
        if scope["type"] == "http":
            body = f"{scope['client']} {scope['scheme']}".encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})

    return app


async def request(app: Any, client: tuple[str, int], headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        return await http.get("/path", headers=headers)


def test_middleware_end_to_end() -> None:
    seen: list[Scope] = []
    app = ProxyHeadersMiddleware(recording_app(seen), trusted_hosts="127.0.0.1")
    forwarded = {"x-forwarded-for": "6.6.6.6, 1.2.3.4", "x-forwarded-proto": "https"}

    async def main() -> tuple[httpx.Response, httpx.Response]:
        trusted = await request(app, ("127.0.0.1", 123), forwarded)
        untrusted = await request(app, ("8.8.8.8", 123), forwarded)
        return trusted, untrusted

    trusted, untrusted = asyncio.run(asyncio.wait_for(main(), timeout=10))
    assert trusted.text == "('1.2.3.4', 0) https"
    assert untrusted.text == "('8.8.8.8', 123) http"


def test_middleware_default_trusts_localhost_only() -> None:
    app = ProxyHeadersMiddleware(recording_app([]))
    assert app.trusted_proxies.is_trusted("127.0.0.1")
    assert not app.trusted_proxies.is_trusted("::1")


def test_middleware_websocket_and_lifespan_scopes() -> None:
    seen: list[Scope] = []
    app = ProxyHeadersMiddleware(recording_app(seen), trusted_hosts="*")
    ws_scope = make_scope(headers=[(FWD, "for=1.2.3.4;proto=https")], scope_type="websocket")
    lifespan_scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}}

    async def receive() -> Message:
        raise AssertionError("not called")

    async def send(message: Message) -> None:
        raise AssertionError("not called")

    async def main() -> None:
        await app(ws_scope, receive, send)
        await app(lifespan_scope, receive, send)

    asyncio.run(asyncio.wait_for(main(), timeout=10))
    assert (seen[0]["client"], seen[0]["scheme"]) == (("1.2.3.4", 0), "wss")
    assert seen[1] == {"type": "lifespan", "asgi": {"version": "3.0"}}
