"""Server ``ssl.SSLContext`` from the ``--ssl-*`` settings (uvicorn semantics).

Invariants
    * Every configuration problem (missing or unreadable file, bad certificate or key, wrong
      or missing key password, unknown protocol / verify mode, bad cipher string or CA file)
      raises :class:`TLSConfigError` with a one-line message naming the setting and file; the
      underlying exception is chained. Nothing else escapes.
    * Never prompts: an encrypted key needs ``password`` (OpenSSL would otherwise ask on the
      terminal, which hangs a daemon); a missing password is reported as an error.
    * ``ciphers`` ``None``, ``""`` or ``"TLSv1"`` keep Python's secure defaults. ``"TLSv1"`` was
      uvicorn's historical default; passed to OpenSSL it would limit TLS 1.2 to legacy CBC
      suites, so it is treated as "default" (uvicorn 0.54 defaults to None: same result).
    * ``ssl_version`` ``PROTOCOL_TLS`` (2, uvicorn's old default) is read as
      ``PROTOCOL_TLS_SERVER``; ``PROTOCOL_TLS_CLIENT`` is refused.
    * ALPN is always offered (``alpn_protocols``): ``["http/1.1"]``, or ``H2_ALPN_PROTOCOLS``
      (``"h2"`` first, RFC 9113 §3.2) when HTTP/2 is on.

Like uvicorn's ``create_ssl_context`` in ``uvicorn/config.py`` (read, not copied), plus the
diagnostics and the no-prompt rule above.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from typing import Final

__all__ = [
    "DEFAULT_ALPN_PROTOCOLS",
    "DEFAULT_CIPHERS",
    "H2_ALPN_PROTOCOLS",
    "TLSConfigError",
    "create_ssl_context",
]

DEFAULT_ALPN_PROTOCOLS: Final = ("http/1.1",)
H2_ALPN_PROTOCOLS: Final = ("h2", "http/1.1")
DEFAULT_CIPHERS: Final = "TLSv1"  # uvicorn's historical --ssl-ciphers default; means "default"
_DEFAULT_CIPHER_VALUES: Final = frozenset({"", DEFAULT_CIPHERS})

StrPath = str | os.PathLike[str]


class TLSConfigError(Exception):
    """The ``--ssl-*`` settings cannot produce a server context (one-line message)."""


def create_ssl_context(
    *,
    certfile: StrPath,
    keyfile: StrPath | None = None,
    password: str | None = None,
    ssl_version: int = ssl.PROTOCOL_TLS_SERVER,
    cert_reqs: int = ssl.CERT_NONE,
    ca_certs: StrPath | None = None,
    ciphers: str | None = None,
    alpn_protocols: Sequence[str] = DEFAULT_ALPN_PROTOCOLS,
) -> ssl.SSLContext:
    """Build the server context; raise :class:`TLSConfigError` on any configuration problem."""
    certfile = _existing_file(certfile, "--ssl-certfile")
    keyfile = _existing_file(keyfile, "--ssl-keyfile") if keyfile is not None else None
    context = _new_context(ssl_version)
    _load_cert_chain(context, certfile, keyfile, password)
    context.verify_mode = _verify_mode(cert_reqs)
    if ca_certs is not None:
        _load_ca_certs(context, _existing_file(ca_certs, "--ssl-ca-certs"))
    if ciphers is not None and ciphers.strip() not in _DEFAULT_CIPHER_VALUES:
        _set_ciphers(context, ciphers)
    if alpn_protocols:
        _set_alpn(context, alpn_protocols)
    return context


def _existing_file(path: StrPath, setting: str) -> str:
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise TLSConfigError(f"{setting}: file not found: {name}")
    if not os.access(name, os.R_OK):
        raise TLSConfigError(f"{setting}: file not readable: {name}")
    return name


def _new_context(ssl_version: int) -> ssl.SSLContext:
    if ssl_version == ssl.PROTOCOL_TLS_CLIENT:
        raise TLSConfigError(f"--ssl-version {ssl_version} is PROTOCOL_TLS_CLIENT, not a server")
    if ssl_version == 2:  # ssl.PROTOCOL_TLS, deprecated alias of the negotiating protocol
        ssl_version = ssl.PROTOCOL_TLS_SERVER
    try:
        return ssl.SSLContext(ssl_version)
    except (ValueError, ssl.SSLError) as exc:
        raise TLSConfigError(f"--ssl-version {ssl_version}: {_one_line(exc)}") from exc


def _load_cert_chain(
    context: ssl.SSLContext, certfile: str, keyfile: str | None, password: str | None
) -> None:
    # Return "" rather than None when no password is set: None makes OpenSSL prompt.
    secret = password or ""
    try:
        context.load_cert_chain(certfile, keyfile, lambda: secret)
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise TLSConfigError(_diagnose(certfile, keyfile, password, exc)) from exc


def _diagnose(certfile: str, keyfile: str | None, password: str | None, exc: Exception) -> str:
    """OpenSSL says "PEM lib" for most failures; work out which file is at fault."""
    if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
        return f"--ssl-keyfile {keyfile or certfile} does not match --ssl-certfile {certfile}"
    if not _has_certificate(certfile):
        return f"--ssl-certfile {certfile}: no PEM certificate could be loaded"
    key_source = keyfile or certfile
    setting = "--ssl-keyfile" if keyfile else "--ssl-certfile"
    if _is_encrypted_key(key_source):
        if password:
            return f"{setting} {key_source}: cannot decrypt the key with --ssl-keyfile-password"
        return f"{setting} {key_source}: the key is encrypted; set --ssl-keyfile-password"
    return f"{setting} {key_source}: cannot load the private key ({_one_line(exc)})"


def _has_certificate(certfile: str) -> bool:
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=certfile)
    except (ssl.SSLError, ValueError, OSError):
        return False
    return True


def _is_encrypted_key(path: str) -> bool:
    try:
        with open(path, "rb") as file:
            text = file.read(1 << 20)
    except OSError:
        return False
    return b"ENCRYPTED PRIVATE KEY" in text or b"Proc-Type: 4,ENCRYPTED" in text


def _verify_mode(cert_reqs: int) -> ssl.VerifyMode:
    try:
        return ssl.VerifyMode(cert_reqs)
    except ValueError:
        valid = ", ".join(f"{mode.value} ({mode.name})" for mode in ssl.VerifyMode)
        raise TLSConfigError(f"--ssl-cert-reqs {cert_reqs}: expected one of {valid}") from None


def _load_ca_certs(context: ssl.SSLContext, ca_certs: str) -> None:
    try:
        context.load_verify_locations(cafile=ca_certs)
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise TLSConfigError(f"--ssl-ca-certs {ca_certs}: {_one_line(exc)}") from exc


def _set_ciphers(context: ssl.SSLContext, ciphers: str) -> None:
    try:
        context.set_ciphers(ciphers)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"--ssl-ciphers {ciphers!r}: {_one_line(exc)}") from exc


def _set_alpn(context: ssl.SSLContext, protocols: Sequence[str]) -> None:
    if not ssl.HAS_ALPN:  # pragma: no cover - every supported OpenSSL has ALPN
        return
    try:
        context.set_alpn_protocols(list(protocols))
    except (ssl.SSLError, ValueError, TypeError) as exc:
        raise TLSConfigError(f"ALPN protocols {list(protocols)!r}: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
