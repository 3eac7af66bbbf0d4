"""TLS end to end: certificates from trustme, real handshakes with httpx and ssl sockets."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from apps.echo import app as echo_app
from conftest import cli_server, run_server, start_cli

ECHO = "tests.apps.echo:app"
PASSWORD = "open sesame"


@dataclass
class Certs:
    ca: trustme.CA
    ca_file: Path
    cert: Path
    key: Path
    encrypted_key: Path
    client: trustme.LeafCert


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("tls-e2e")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key", "encrypted")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    paths["encrypted"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSWORD.encode()),
        )
    )
    return Certs(
        ca=ca,
        ca_file=paths["ca"],
        cert=paths["cert"],
        key=paths["key"],
        encrypted_key=paths["encrypted"],
        client=ca.issue_cert("client.test"),
    )


def client_context(certs: Certs, *, with_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    certs.ca.configure_trust(context)
    if with_client_cert:
        certs.client.configure_cert(context)
    return context


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("ERROR:")]


def run_to_exit(*args: str) -> tuple[int, str]:
    srv = start_cli(*args)
    try:
        code = srv.wait(timeout=15)
    finally:
        srv.stop()
    return code, srv.output


def test_https_from_the_command_line(certs: Certs) -> None:
    args = ("--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(certs.key), "--port", "0")
    with (
        cli_server(ECHO, *args) as srv,
        httpx.Client(verify=client_context(certs), timeout=5) as client,
    ):
        assert srv.scheme == "https"
        assert f"running on https://127.0.0.1:{srv.port} " in srv.output
        seen = client.get(srv.url + "/secure").json()
    assert (seen["scheme"], seen["path"]) == ("https", "/secure")


def test_password_protected_key(certs: Certs) -> None:
    args = ["--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(certs.encrypted_key)]
    args += ["--ssl-keyfile-password", PASSWORD, "--port", "0"]
    with (
        cli_server(ECHO, *args) as srv,
        httpx.Client(verify=client_context(certs), timeout=5) as client,
    ):
        assert client.get(srv.url).json()["scheme"] == "https"
    assert PASSWORD not in srv.output


TLS_ERRORS = {
    "missing-cert": "--ssl-certfile: file not found: {missing}",
    "missing-key": "--ssl-keyfile: file not found: {missing}",
    "no-password": "--ssl-keyfile {encrypted}: the key is encrypted; set --ssl-keyfile-password",
    "bad-password": "--ssl-keyfile {encrypted}: cannot decrypt the key with --ssl-keyfile-",
}


@pytest.mark.parametrize(("which", "message"), TLS_ERRORS.items(), ids=list(TLS_ERRORS))
def test_tls_setting_errors_exit_3_with_one_line(
    certs: Certs, tmp_path: Path, which: str, message: str
) -> None:
    missing = tmp_path / "missing.pem"
    cert, key, extra = str(certs.cert), str(certs.key), []
    if which == "missing-cert":
        cert = str(missing)
    elif which == "missing-key":
        key = str(missing)
    else:
        key = str(certs.encrypted_key)
        extra = ["--ssl-keyfile-password", "wrong"] if which == "bad-password" else []
    code, out = run_to_exit(
        ECHO, "--port", "0", "--ssl-certfile", cert, "--ssl-keyfile", key, *extra
    )
    assert code == 3
    expected = message.format(missing=missing, encrypted=certs.encrypted_key)
    [line] = error_lines(out)
    assert line.startswith(f"ERROR:    TLS configuration error: {expected}")
    assert "Traceback" not in out


def test_client_certificate_required(certs: Certs) -> None:
    settings = {
        "ssl_certfile": str(certs.cert),
        "ssl_keyfile": str(certs.key),
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": str(certs.ca_file),
    }
    with run_server(echo_app, **settings) as running:
        with (
            httpx.Client(verify=client_context(certs), timeout=5) as client,
            pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
        ):
            client.get(running.url)
        context = client_context(certs, with_client_cert=True)
        with httpx.Client(verify=context, timeout=5) as client:
            assert client.get(running.url).json()["scheme"] == "https"


def test_cert_reqs_from_the_command_line(certs: Certs) -> None:
    args = ["--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(certs.key)]
    args += ["--ssl-cert-reqs", "2", "--ssl-ca-certs", str(certs.ca_file), "--port", "0"]
    with cli_server(ECHO, *args) as srv:
        with (
            httpx.Client(verify=client_context(certs), timeout=5) as client,
            pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
        ):
            client.get(srv.url)
        context = client_context(certs, with_client_cert=True)
        with httpx.Client(verify=context, timeout=5) as client:
            assert client.get(srv.url).status_code == 200


@pytest.mark.parametrize(
    ("http2", "offered", "selected"),
    [
        (False, ["h2", "http/1.1"], "http/1.1"),
        (False, ["http/1.1"], "http/1.1"),
        (False, ["h2"], None),
        (True, ["h2", "http/1.1"], "h2"),
        (True, ["http/1.1"], "http/1.1"),
        (True, ["h2"], "h2"),
    ],
)
def test_alpn(certs: Certs, http2: bool, offered: list[str], selected: str | None) -> None:
    settings = {"ssl_certfile": str(certs.cert), "ssl_keyfile": str(certs.key), "http2": http2}
    context = client_context(certs)
    context.set_alpn_protocols(offered)
    with run_server(echo_app, **settings) as running:
        raw = socket.create_connection((running.host, running.port), timeout=5)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() == selected
            if selected == "h2":  # the server's preface: a SETTINGS frame (RFC 9113 §3.4)
                settings_frame = b"\0\0\0\x04\0\0\0\0\0"  # empty, not an ACK
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings_frame)
                assert tls.recv(65536)[3] == 4
                return
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert tls.recv(65536).startswith(b"HTTP/1.1 200 ")
