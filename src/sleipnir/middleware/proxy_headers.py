"""Proxy headers: trust the direct peer, then take client, scheme and host from what it forwarded.

``TrustedProxies.apply(scope)`` is called by the server core for every ``http``/``websocket``
scope when ``--proxy-headers`` is on (or ``apply_trusted(scope)`` after one ``is_trusted(peer)``
check per connection); ``ProxyHeadersMiddleware`` wraps the same logic as a pure
ASGI app for people composing their own stack (uvicorn has a class of the same name).

Trust list (``--forwarded-allow-ips``), comma separated:
    * IPv4/IPv6 addresses (compared as addresses, so ``::1`` == ``0:0::1``; an IPv4-mapped
      peer ``::ffff:10.0.0.1`` also matches ``10.0.0.1`` and IPv4 networks);
    * networks in CIDR form (host bits allowed: ``10.0.0.1/8`` means ``10.0.0.0/8``);
    * ``*``: trust every peer (uvicorn honours ``*`` only as the whole value; here any entry);
    * any other entry is a literal compared with the peer host string exactly, as uvicorn 0.54
      does (for non-IP peers). A peer without an address (``scope["client"] is None``, e.g.
      most Unix-socket set-ups) is trusted only by ``*``.

Headers, read only when the direct peer is trusted (one pass over ``scope["headers"]``):
    * ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` / ``-Port`` take precedence: they are what
      most proxies set (nginx, and every uvicorn deployment), and such a proxy passes a
      client's own ``Forwarded`` header through untouched, so preferring ``Forwarded`` would let
      that client choose its address.
    * ``Forwarded`` (RFC 7239) is used when no ``X-Forwarded-*`` header is present.

The client is found by walking the hops right to left (each proxy appends, RFC 7239 §5.2),
skipping trusted ones; the first untrusted hop is the client, or the leftmost hop if all are
trusted. Its port is the forwarded one or 0 (uvicorn). ``for=unknown`` (RFC 7239 §6.1) sets
``client`` to None; an obfuscated identifier (RFC 7239 §6.3) becomes the client host as is.

Proto and host come from the same ``Forwarded`` element as the client (that element was
written by the proxy that talked to the client); for list-valued ``X-Forwarded-Proto/Host/Port``
the rightmost value, written by the trusted peer, is used. A forwarded host replaces the
``host`` request header (frameworks build URLs from it) and sets ``scope["server"]`` with the
forwarded port, else the port in the host value, else the scheme's default port.

Never raises on request data: a header that cannot be parsed, or whose hop at the point the
walk stops is malformed, is ignored as if absent. An invalid proto, host or port value is
ignored on its own.
"""

from __future__ import annotations

import functools
import ipaddress
import operator
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from sleipnir.types import ASGIApp, Receive, Scope, Send

__all__ = ["ProxyHeadersMiddleware", "TrustedProxies"]

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Only short strings are cached: an IP literal is at most ~45 characters plus a zone id; longer
# (attacker-supplied) strings would pin memory in the cache. Caching trust answers is an idea
# from uvicorn 0.54's _TrustedHosts.
_CACHEABLE_LENGTH: Final = 64

_FORWARDED: Final = 0
_XFF: Final = 1
_XF_PROTO: Final = 2
_XF_HOST: Final = 3
_XF_PORT: Final = 4
_HEADER_SLOTS: Final = {
    b"forwarded": _FORWARDED,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XF_PROTO,
    b"x-forwarded-host": _XF_HOST,
    b"x-forwarded-port": _XF_PORT,
}

_HEADER_NAMES: Final = frozenset(_HEADER_SLOTS)
_name_of: Final = operator.itemgetter(0)  # a header's name

_HTTP_SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_WS_SCHEMES: Final = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# RFC 7239 §4: forwarded-pair = token "=" value; value = token / quoted-string (RFC 9110 §5.6).
_TOKEN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QDTEXT: Final = r'[^"\\\x00-\x08\x0a-\x1f\x7f]'  # HTAB, SP, VCHAR but DQUOTE/backslash
_QUOTED_CHAR: Final = r"\\[^\x00-\x08\x0a-\x1f\x7f]"
_PAIR: Final = re.compile(rf'({_TOKEN})=(?:({_TOKEN})|"((?:{_QDTEXT}|{_QUOTED_CHAR})*)")')
_QUOTED_PAIR: Final = re.compile(r"\\(.)")
_UNQUOTED_CHARS: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z=;, \t]*")
_OWS: Final = " \t"
# RFC 7239 §6: node = nodename [ ":" node-port ]; obfnode/obfport = "_" 1*( ALPHA / DIGIT /
# "." / "_" / "-" ); port = 1*5DIGIT. IPv6 nodenames are bracketed.
_NODE: Final = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+(?:%[0-9A-Za-z._~-]+)?)\]|(?P<name>[0-9A-Za-z._-]+))"
    r"(?::(?P<port>[0-9]{1,5}|_[0-9A-Za-z._-]+))?"
)
_OBFUSCATED: Final = re.compile(r"_[0-9A-Za-z._-]+")
# Host header value (RFC 9110 §7.2): reg-name (unreserved + pct-encoded) or [IPv6], optional port.
_HOST: Final = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z\-._~%]+)(?::([0-9]{1,5}))?")


class _Invalid:
    """Marker: a hop address that does not parse."""


class _Keep:
    """Marker: the chosen Forwarded element has no ``for``; leave ``client`` as it is."""


_INVALID: Final = _Invalid()
_KEEP: Final = _Keep()
# A parsed hop address: (host, port), None for "unknown", or _INVALID.
_Node = tuple[str, int] | None | _Invalid


class TrustedProxies:
    """The ``--forwarded-allow-ips`` trust list and the scope rewrite that depends on it."""

    __slots__ = ("_cached", "always_trust", "hosts", "literals", "networks")

    def __init__(self, forwarded_allow_ips: str | Sequence[str]) -> None:
        entries = _split_entries(forwarded_allow_ips)
        self.always_trust = "*" in entries
        self.hosts: set[_IPAddress] = set()
        self.networks: list[_IPNetwork] = []
        self.literals: set[str] = set()
        for entry in entries:
            self._add(entry)
        self._cached: Callable[[str], bool] = functools.lru_cache(maxsize=4096)(self._compute)

    def _add(self, entry: str) -> None:
        try:
            if "/" in entry:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            else:
                self.hosts.add(ipaddress.ip_address(entry))
        except ValueError:
            self.literals.add(entry)

    def is_trusted(self, host: str | None) -> bool:
        """True if ``host`` (an address string or a literal) is a trusted proxy."""
        if self.always_trust:
            return True
        if not host:
            return False
        if len(host) > _CACHEABLE_LENGTH:
            return self._compute(host)
        return self._cached(host)

    def _compute(self, host: str) -> bool:
        if host in self.literals:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        return self._address_trusted(address) or (
            mapped is not None and self._address_trusted(mapped)
        )

    def _address_trusted(self, address: _IPAddress) -> bool:
        return address in self.hosts or any(address in network for network in self.networks)

    def apply(self, scope: Scope) -> None:
        """Rewrite ``client``/``scheme``/``server``/``host`` of a trusted peer's scope in place."""
        client = scope.get("client")
        # The peer host comes from the socket, not the request: always safe to cache.
        if self.always_trust or (client and client[0] and self._cached(client[0])):
            self.apply_trusted(scope)

    def apply_trusted(self, scope: Scope) -> None:
        """:meth:`apply` for a peer the caller already found trusted (once per connection)."""
        headers = scope["headers"]
        # The common case (no forwarding header at all) costs one C-level pass, no Python loop
        # (map/itemgetter rather than dict(headers): no dict to build, about 2.5x faster).
        if _HEADER_NAMES.isdisjoint(map(_name_of, headers)):
            return
        found: dict[int, list[bytes]] | None = None
        for name, value in headers:
            slot = _HEADER_SLOTS.get(name)
            if slot is not None:
                if found is None:
                    found = {}
                found.setdefault(slot, []).append(value)
        if found is None:
            return
        if _FORWARDED in found and len(found) == 1:
            self._apply_forwarded(scope, found[_FORWARDED])
            return
        self._apply_x_forwarded(scope, found)

    # ------------------------------------------------------------------ RFC 7239 Forwarded

    def _apply_forwarded(self, scope: Scope, values: list[bytes]) -> bool:
        """Apply ``Forwarded``; False if it is unusable (then X-Forwarded-* applies)."""
        elements = _parse_forwarded(b",".join(values).decode("latin-1"))
        if not elements:
            return False
        hop = self._choose_hop(elements)
        if hop is None:
            return False
        element, client = hop
        if not isinstance(client, _Keep):
            scope["client"] = client
        _set_scheme(scope, element.get("proto"))
        _set_host(scope, element.get("host"), None)
        return True

    def _choose_hop(
        self, elements: list[dict[str, str]]
    ) -> tuple[dict[str, str], tuple[str, int] | _Keep | None] | None:
        """The rightmost element whose ``for`` is not trusted (else the leftmost), or None."""
        node: _Node = None
        for element in reversed(elements):
            if "for" not in element:  # this hop did not say who its peer was: stop here
                return element, _KEEP
            node = _parse_node(element["for"])
            if isinstance(node, _Invalid):
                return None
            if not self._hop_trusted(node):
                return element, node
        assert not isinstance(node, _Invalid)
        return elements[0], node

    def _hop_trusted(self, node: tuple[str, int] | None) -> bool:
        return node is not None and self.is_trusted(node[0])  # "unknown" is never trusted

    # ------------------------------------------------------------------ X-Forwarded-*

    def _apply_x_forwarded(self, scope: Scope, found: dict[int, list[bytes]]) -> None:
        if _XFF in found:
            client = self._client_from_xff(found[_XFF])
            if not isinstance(client, _Invalid):
                scope["client"] = client
        if _XF_PROTO in found:
            _set_scheme(scope, _rightmost(found[_XF_PROTO]))
        port = _parse_port(_rightmost(found[_XF_PORT])) if _XF_PORT in found else None
        if _XF_HOST in found:
            _set_host(scope, _rightmost(found[_XF_HOST]), port)
        elif port is not None and scope.get("server") and scope["server"][1] is not None:
            scope["server"] = (scope["server"][0], port)  # a Unix socket server has no port

    def _client_from_xff(self, values: list[bytes]) -> _Node:
        hops = b",".join(values).decode("latin-1").split(",")
        node: _Node = _INVALID
        for hop in reversed(hops):
            node = _parse_node(hop.strip(_OWS))
            if isinstance(node, _Invalid) or not self._hop_trusted(node):
                return node
        return node


# ---------------------------------------------------------------------- parsing helpers


def _split_entries(value: str | Sequence[str]) -> list[str]:
    items: Iterable[str] = value.split(",") if isinstance(value, str) else value
    return [stripped for item in items if (stripped := item.strip())]


def _rightmost(values: list[bytes]) -> str:
    return values[-1].decode("latin-1").rsplit(",", 1)[-1].strip(_OWS)


def _parse_forwarded(value: str) -> list[dict[str, str]] | None:
    """RFC 7239 §4 ``Forwarded`` (already joined with ","); None on any syntax error.

    Parameter names are case-insensitive and occur at most once per element (§4); empty list
    elements are dropped (RFC 9110 §5.6.1). Whitespace is tolerated around ";" and ",".
    """
    if '"' in value:
        return _parse_forwarded_quoted(value)
    if _UNQUOTED_CHARS.fullmatch(value) is None:
        return None
    elements: list[dict[str, str]] = []
    for element_text in value.split(","):
        element: dict[str, str] = {}
        for pair in element_text.split(";"):
            pair = pair.strip(_OWS)
            if not pair:
                continue
            name, _, token = pair.partition("=")
            name = name.lower()
            if not (name and token and _is_token(name) and _is_token(token)) or name in element:
                return None  # "=" missing or doubled, whitespace inside, or a repeated name
            element[name] = token
        if element:
            elements.append(element)
    return elements


def _is_token(text: str) -> bool:
    """True unless ``text`` holds "=" or whitespace (its other characters are checked)."""
    return "=" not in text and " " not in text and "\t" not in text


def _parse_forwarded_quoted(value: str) -> list[dict[str, str]] | None:
    """The general tokenizer, used when quoted-strings are present."""
    elements: list[dict[str, str]] = []
    current: dict[str, str] = {}
    pos, end = 0, len(value)
    while True:
        pos = _skip_ows(value, pos)
        if pos < end and value[pos] not in ";,":
            match = _PAIR.match(value, pos)
            if match is None:
                return None
            name = match.group(1).lower()
            if name in current:
                return None
            token, quoted = match.group(2), match.group(3)
            current[name] = token if token is not None else _QUOTED_PAIR.sub(r"\1", quoted)
            pos = _skip_ows(value, match.end())
        if pos >= end:
            break
        separator = value[pos]
        pos += 1
        if separator == ",":
            elements.append(current)
            current = {}
        elif separator != ";":
            return None
    elements.append(current)
    return [element for element in elements if element]


def _skip_ows(value: str, pos: int) -> int:
    end = len(value)
    while pos < end and value[pos] in _OWS:
        pos += 1
    return pos


def _parse_node(value: str) -> _Node:
    """An RFC 7239 §6 node (also used for X-Forwarded-For hops) → (host, port), None, _INVALID.

    Accepts IPv4, ``[IPv6]`` (a bare IPv6 address too, for X-Forwarded-For), ``unknown`` and
    obfuscated identifiers, each with an optional port; an obfuscated port (§6.3) reads as 0.
    """
    if _is_ipv4(value):  # the common X-Forwarded-For hop, without the regex
        return (value, 0)
    match = _NODE.fullmatch(value)
    if match is None:
        return (value, 0) if ":" in value and _is_ipv6(value) else _INVALID
    port_text = match.group("port")
    port = 0
    if port_text is not None and not port_text.startswith("_"):
        port = int(port_text)
        if port > 65535:
            return _INVALID
    v6 = match.group("v6")
    if v6 is not None:
        return (v6, port) if _is_ipv6(v6) else _INVALID
    name = match.group("name")
    if name.lower() == "unknown":
        return None
    if _OBFUSCATED.fullmatch(name) or _is_ipv4(name):
        return (name, port)
    return _INVALID


# socket.inet_pton is strict (dotted quad, no leading zeros), agrees with ipaddress and is an
# order of magnitude faster; ipaddress is kept for IPv6 zone ids ("fe80::1%eth0").
def _is_ipv4(value: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, value)
    except (OSError, ValueError):
        return False
    return True


def _is_ipv6(value: str) -> bool:
    try:
        if "%" in value:
            return ipaddress.ip_address(value).version == 6
        socket.inet_pton(socket.AF_INET6, value)
    except (OSError, ValueError):
        return False
    return True


def _parse_port(value: str) -> int | None:
    if value.isascii() and value.isdigit() and len(value) <= 5 and int(value) <= 65535:
        return int(value)
    return None


def _set_scheme(scope: Scope, proto: str | None) -> None:
    """RFC 7239 §5.4 ``proto`` / X-Forwarded-Proto: http(s) or ws(s), mapped to the scope type."""
    if proto is None:
        return
    table = _WS_SCHEMES if scope.get("type") == "websocket" else _HTTP_SCHEMES
    scheme = table.get(proto.strip(_OWS).lower())
    if scheme is not None:
        scope["scheme"] = scheme


def _set_host(scope: Scope, host: str | None, port: int | None) -> None:
    """RFC 7239 §5.3 ``host`` / X-Forwarded-Host: replace the Host header, set ``server``.

    ``port`` (X-Forwarded-Port) wins over a port inside ``host``; when ``host`` has none and
    ``port`` is not the scheme's default, it is added to the Host header so URLs built from
    that header keep it.
    """
    if host is None:
        return
    match = _HOST.fullmatch(host)
    if match is None:
        return
    default_port = _DEFAULT_PORTS.get(scope.get("scheme", "http"), 80)
    hostname = host[: match.start(1) - 1] if match.group(1) is not None else host
    if port is None:
        port = _parse_port(match.group(1)) if match.group(1) is not None else default_port
        if port is None:
            return
    elif match.group(1) is None and port != default_port:
        host = f"{host}:{port}"
    scope["server"] = (hostname.strip("[]"), port)
    headers = [(name, value) for name, value in scope["headers"] if name != b"host"]
    headers.append((b"host", host.encode("ascii")))
    scope["headers"] = headers


# ---------------------------------------------------------------------- ASGI middleware


class ProxyHeadersMiddleware:
    """Pure-ASGI wrapper applying :class:`TrustedProxies` to ``http``/``websocket`` scopes."""

    def __init__(self, app: ASGIApp, trusted_hosts: str | Sequence[str] = "127.0.0.1") -> None:
        self.app = app
        self.trusted_proxies = TrustedProxies(trusted_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            self.trusted_proxies.apply(scope)
        await self.app(scope, receive, send)
