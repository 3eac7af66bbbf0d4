"""Logging of a real server process: the access line, trace, --log-config files and colours."""

from __future__ import annotations

import json
import re
import signal
import socket
import textwrap
from pathlib import Path

import httpx
import pytest

from conftest import CLIServer, cli_server, start_cli

ECHO = "tests.apps.echo:app"
CONTROL = "tests.apps.control:app"
ESC = "\x1b["


def request(srv: CLIServer, path: str = "/", *, body: bytes | None = None) -> httpx.Response:
    with httpx.Client(timeout=5) as client:
        if body is None:
            return client.get(srv.url + path)
        return client.post(srv.url + path, content=body)


# --------------------------------------------------------------------------- access log

FIELDS = "{client} {request_line} {status} {bytes} {duration_ms} {method} {path} {query_string}"


def test_access_line_is_written_when_the_response_completes() -> None:
    args = ("--port", "0", "--access-log-format", "ACCESS " + FIELDS)
    with (
        cli_server(CONTROL, *args) as srv,
        socket.create_connection((srv.host, srv.port), timeout=5) as sock,
    ):
        sock.sendall(b"GET /stream?x=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        srv.wait_output("app: holding")
        assert "ACCESS " not in srv.output  # the response has begun, not completed
        srv.proc.send_signal(signal.SIGUSR1)
        line = srv.wait_output(r"ACCESS (.*)\n").group(1)
        client_port = sock.getsockname()[1]
    client, method, target, version, status, sent, duration, *rest = line.split()
    assert client == f"127.0.0.1:{client_port}"
    assert (method, target, version) == ("GET", "/stream?x=1", "HTTP/1.1")
    assert (status, sent) == ("200", str(len(b"first last")))
    assert float(duration) > 0
    assert rest == ["GET", "/stream", "x=1"]


def test_default_access_line_is_uvicorn_like() -> None:
    with cli_server(ECHO, "--port", "0") as srv:
        response = request(srv, "/a?b=c")
        client = "127.0.0.1:{}".format(response.json()["client"][1])
        srv.wait_output(re.escape(f'INFO:     {client} - "GET /a?b=c HTTP/1.1" 200 OK'))


def test_no_access_log() -> None:
    with cli_server(CONTROL, "--port", "0", "--no-access-log") as srv:
        assert request(srv).status_code == 200
        assert request(srv, "/missing-is-ok-too").status_code == 200
        assert srv.stop() == 0
    assert "GET /" not in srv.output
    assert "Application shutdown complete." in srv.output  # the rest is still logged


# --------------------------------------------------------------------------- trace


def test_trace_logs_each_asgi_message_with_body_sizes() -> None:
    secret = b"s3cr3t-" * 150
    with cli_server(ECHO, "--port", "0", "--log-level", "trace") as srv:
        response = request(srv, "/traced", body=secret)
        assert response.status_code == 200
        srv.wait_output(r"ASGI \[send\] \{'type': 'http.response.body'")
    trace = [line for line in srv.output.splitlines() if line.startswith("TRACE:")]
    assert len(trace) == 3, trace  # one request body message, response start, response body
    receive, start, body = trace
    assert (
        "ASGI [receive] {'type': 'http.request', 'body': '<1050 bytes>', 'more_body': False}"
        in (receive)
    )
    assert "'type': 'http.response.start', 'status': 200" in start
    assert f"'body': '<{len(response.content)} bytes>'" in body
    assert "s3cr3t" not in srv.output


def test_info_level_has_no_trace() -> None:
    with cli_server(ECHO, "--port", "0", "--log-level", "info") as srv:
        assert request(srv, body=b"x").status_code == 200
    assert "TRACE:" not in srv.output
    assert "ASGI [" not in srv.output


# --------------------------------------------------------------------------- --log-config

JSON_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"custom": {"format": "JSONFMT|%(levelname)s|%(name)s|%(message)s"}},
    "handlers": {
        "out": {
            "class": "logging.StreamHandler",
            "formatter": "custom",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {"sleipnir": {"handlers": ["out"], "level": "INFO", "propagate": False}},
}

YAML_CONFIG = """\
version: 1
disable_existing_loggers: false
formatters:
  custom:
    format: "YAMLFMT|%(levelname)s|%(name)s|%(message)s"
handlers:
  out:
    class: logging.StreamHandler
    formatter: custom
    stream: ext://sys.stdout
loggers:
  sleipnir:
    handlers: [out]
    level: INFO
    propagate: false
"""

INI_CONFIG = """\
[loggers]
keys = root, sleipnir

[handlers]
keys = out

[formatters]
keys = custom

[logger_root]
level = WARNING
handlers =

[logger_sleipnir]
level = INFO
handlers = out
qualname = sleipnir
propagate = 0

[handler_out]
class = StreamHandler
formatter = custom
args = (sys.stderr,)

[formatter_custom]
format = INIFMT|%(levelname)s|%(name)s|%(message)s
"""


@pytest.mark.parametrize(
    ("suffix", "text", "tag"),
    [
        (".json", json.dumps(JSON_CONFIG), "JSONFMT"),
        (".yaml", YAML_CONFIG, "YAMLFMT"),
        (".ini", INI_CONFIG, "INIFMT"),
    ],
    ids=["json", "yaml", "ini"],
)
def test_log_config_files_apply(tmp_path: Path, suffix: str, text: str, tag: str) -> None:
    if suffix == ".yaml":
        pytest.importorskip("yaml")
    path = tmp_path / f"logging{suffix}"
    path.write_text(textwrap.dedent(text))
    with cli_server(ECHO, "--port", "0", "--log-config", str(path)) as srv:
        response = request(srv, "/configured")
        assert response.status_code == 200
        srv.wait_output(f"{tag}\\|INFO\\|sleipnir.access\\|.*GET /configured")
    lines = srv.output.splitlines()
    assert f"{tag}|INFO|sleipnir.error|Waiting for application startup." in lines
    assert not [line for line in lines if line.startswith("INFO:")]  # the default format is gone


def test_log_level_applies_on_top_of_the_log_config(tmp_path: Path) -> None:
    path = tmp_path / "logging.json"
    path.write_text(json.dumps(JSON_CONFIG))
    args = ("--port", "0", "--log-config", str(path), "--log-level", "warning")
    srv = start_cli("tests.apps.no_such_module:app", *args)
    try:
        assert srv.wait(timeout=15) == 3
    finally:
        srv.stop()
    message = 'Could not import module "tests.apps.no_such_module".'
    assert srv.output.splitlines() == [f"JSONFMT|ERROR|sleipnir.error|{message}"]


# --------------------------------------------------------------------------- colours


@pytest.mark.parametrize("flag", ["--use-colors", "--no-use-colors", None])
def test_colours(flag: str | None) -> None:
    args = [ECHO, "--port", "0"] + ([flag] if flag else [])
    with cli_server(*args) as srv:
        assert request(srv).status_code == 200
        srv.wait_output(r"GET / HTTP/1.1")
    out = srv.output
    if flag == "--use-colors":
        assert f"{ESC}32mINFO{ESC}0m:     Started server process" in out
        assert f"{ESC}1mGET / HTTP/1.1{ESC}0m" in out  # the access line is coloured too
    else:  # not a terminal: no colours unless asked for
        assert ESC not in out
        assert "INFO:     Started server process" in out
