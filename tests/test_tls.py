"""sleipnir.transport.tls: context from --ssl-* settings, real handshakes, one-line errors."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from sleipnir.transport.tls import TLSConfigError, create_ssl_context

PASSWORD = "correct horse"


@dataclass
class Files:
    ca: trustme.CA
    cert: Path
    key: Path
    combined: Path
    encrypted_key: Path
    other_key: Path
    ca_cert: Path
    client_cert: trustme.LeafCert
    garbage: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    other = ca.issue_cert("other.test")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSWORD.encode()),
    )
    paths = {
        name: directory / f"{name}.pem"
        for name in ("cert", "key", "combined", "encrypted_key", "other_key", "ca_cert", "garbage")
    }
    leaf.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(paths["combined"]))
    paths["encrypted_key"].write_bytes(encrypted)
    other.private_key_pem.write_to_path(str(paths["other_key"]))
    ca.cert_pem.write_to_path(str(paths["ca_cert"]))
    paths["garbage"].write_text("this is not PEM\n")
    return Files(ca=ca, client_cert=ca.issue_cert("client.test"), **paths)


def client_context(files: Files, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    files.ca.configure_trust(context)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


@dataclass
class Handshake:
    reply: bytes
    alpn: str | None
    server_saw_peer_cert: bool


async def exchange(server_context: ssl.SSLContext, client: ssl.SSLContext) -> Handshake:
    """Serve one TLS connection on 127.0.0.1:0, send ping, get pong; report what both saw."""
    peer_certs: list[object] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_certs.append(writer.get_extra_info("peercert"))
        data = await reader.readexactly(4)
        writer.write(data.replace(b"ping", b"pong"))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="localhost"
        )
        alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.write(b"ping")
        reply = await reader.readexactly(4)
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    return Handshake(reply, alpn, bool(peer_certs and peer_certs[0]))


def handshake(server_context: ssl.SSLContext, client: ssl.SSLContext) -> Handshake:
    return asyncio.run(asyncio.wait_for(exchange(server_context, client), timeout=10))


# --------------------------------------------------------------------------- working contexts


def test_handshake_with_alpn_http11(files: Files) -> None:
    context = create_ssl_context(certfile=files.cert, keyfile=files.key)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE
    result = handshake(context, client_context(files, ["h2", "http/1.1"]))
    assert result == Handshake(b"pong", "http/1.1", server_saw_peer_cert=False)


def test_alpn_protocols_parameter(files: Files) -> None:
    context = create_ssl_context(
        certfile=str(files.cert), keyfile=str(files.key), alpn_protocols=["h2", "http/1.1"]
    )
    assert handshake(context, client_context(files, ["h2", "http/1.1"])).alpn == "h2"


def test_no_alpn(files: Files) -> None:
    context = create_ssl_context(certfile=files.cert, keyfile=files.key, alpn_protocols=())
    assert handshake(context, client_context(files, ["http/1.1"])).alpn is None


def test_certfile_with_key_inside(files: Files) -> None:
    context = create_ssl_context(certfile=files.combined)
    assert handshake(context, client_context(files)).reply == b"pong"


def test_encrypted_key_with_password(files: Files) -> None:
    context = create_ssl_context(
        certfile=files.cert, keyfile=files.encrypted_key, password=PASSWORD
    )
    assert handshake(context, client_context(files)).reply == b"pong"


def test_client_certificates_required(files: Files) -> None:
    context = create_ssl_context(
        certfile=files.cert,
        keyfile=files.key,
        cert_reqs=ssl.CERT_REQUIRED,
        ca_certs=files.ca_cert,
    )
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.cert_store_stats()["x509_ca"] == 1
    client = client_context(files)
    files.client_cert.configure_cert(client)
    assert handshake(context, client).server_saw_peer_cert


@pytest.mark.parametrize("ciphers", [None, "", "TLSv1", " TLSv1 "])
def test_default_ciphers_are_kept(files: Files, ciphers: str | None) -> None:
    context = create_ssl_context(certfile=files.cert, keyfile=files.key, ciphers=ciphers)
    defaults = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).get_ciphers()
    assert [c["name"] for c in context.get_ciphers()] == [c["name"] for c in defaults]


def test_explicit_ciphers(files: Files) -> None:
    context = create_ssl_context(certfile=files.cert, keyfile=files.key, ciphers="ECDHE+AESGCM")
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all("GCM" in c["name"] and "ECDHE" in c["name"] for c in tls12)


def test_legacy_protocol_tls_is_read_as_server(files: Files) -> None:
    context = create_ssl_context(certfile=files.cert, keyfile=files.key, ssl_version=2)
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ("certfile", r"^--ssl-certfile: file not found: .*missing\.pem$"),
        ("keyfile", r"^--ssl-keyfile: file not found: .*missing\.pem$"),
        ("ca_certs", r"^--ssl-ca-certs: file not found: .*missing\.pem$"),
    ],
)
def test_missing_files(files: Files, tmp_path: Path, setting: str, match: str) -> None:
    arguments: dict[str, Path] = {"certfile": files.cert, "keyfile": files.key}
    arguments[setting] = tmp_path / "missing.pem"
    with pytest.raises(TLSConfigError, match=match):
        create_ssl_context(**arguments)  # type: ignore[arg-type]


def test_directory_is_not_a_file(files: Files, tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match=r"--ssl-certfile: file not found"):
        create_ssl_context(certfile=tmp_path, keyfile=files.key)


def test_wrong_password(files: Files) -> None:
    with pytest.raises(TLSConfigError, match=r"cannot decrypt the key with --ssl-keyfile-pass"):
        create_ssl_context(certfile=files.cert, keyfile=files.encrypted_key, password="wrong")


def test_missing_password_does_not_prompt(files: Files) -> None:
    with pytest.raises(TLSConfigError, match=r"the key is encrypted; set --ssl-keyfile-password"):
        create_ssl_context(certfile=files.cert, keyfile=files.encrypted_key)


def test_garbage_certificate(files: Files) -> None:
    with pytest.raises(TLSConfigError, match=r"--ssl-certfile .*garbage.pem: no PEM certificate"):
        create_ssl_context(certfile=files.garbage, keyfile=files.key)


def test_garbage_key(files: Files) -> None:
    with pytest.raises(TLSConfigError, match=r"--ssl-keyfile .*garbage.pem: cannot load the"):
        create_ssl_context(certfile=files.cert, keyfile=files.garbage)


def test_certificate_without_key(files: Files) -> None:
    with pytest.raises(TLSConfigError, match=r"--ssl-certfile .*cert.pem: cannot load the priv"):
        create_ssl_context(certfile=files.cert)


def test_key_does_not_match_certificate(files: Files) -> None:
    with pytest.raises(TLSConfigError, match=r"other_key.pem does not match --ssl-certfile"):
        create_ssl_context(certfile=files.cert, keyfile=files.other_key)


def test_bad_ca_file(files: Files) -> None:
    with pytest.raises(TLSConfigError, match=r"^--ssl-ca-certs .*garbage.pem: "):
        create_ssl_context(certfile=files.cert, keyfile=files.key, ca_certs=files.garbage)


def test_bad_ciphers(files: Files) -> None:
    with pytest.raises(TLSConfigError, match=r"--ssl-ciphers 'NOPE': .*cipher"):
        create_ssl_context(certfile=files.cert, keyfile=files.key, ciphers="NOPE")


@pytest.mark.parametrize(
    ("ssl_version", "match"),
    [(ssl.PROTOCOL_TLS_CLIENT, "PROTOCOL_TLS_CLIENT, not a server"), (99, "--ssl-version 99")],
)
def test_bad_ssl_version(files: Files, ssl_version: int, match: str) -> None:
    with pytest.raises(TLSConfigError, match=match):
        create_ssl_context(certfile=files.cert, keyfile=files.key, ssl_version=ssl_version)


def test_bad_cert_reqs(files: Files) -> None:
    with pytest.raises(TLSConfigError, match=r"--ssl-cert-reqs 7: expected one of 0 \(CERT_NONE\)"):
        create_ssl_context(certfile=files.cert, keyfile=files.key, cert_reqs=7)


def test_bad_alpn(files: Files) -> None:
    with pytest.raises(TLSConfigError, match=r"ALPN protocols"):
        create_ssl_context(certfile=files.cert, keyfile=files.key, alpn_protocols=["x" * 300])


def test_errors_are_one_line_and_chained(files: Files) -> None:
    with pytest.raises(TLSConfigError) as info:
        create_ssl_context(certfile=files.cert, keyfile=files.other_key)
    assert "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, ssl.SSLError)
