"""The `sleipnir` command end to end: real subprocesses, real sockets, exit codes and output.

Startup failures exit with status 3 and one ``ERROR:`` line; only an exception raised by the
application's own code adds a traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import cli_server, start_cli
from sleipnir._version import __version__

ECHO = "tests.apps.echo:app"
STARTUP_FAILURE = 3


def run_to_exit(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    srv = start_cli(*args, env=env)
    try:
        code = srv.wait(timeout=15)
    finally:
        srv.stop()
    return code, srv.output


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("ERROR:")]


def get_json(url: str, **kwargs: Any) -> Any:
    with httpx.Client(timeout=5) as client:
        response = client.get(url, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# --------------------------------------------------------------------------- startup failures


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("tests.apps.echo", 'Import string "tests.apps.echo" must be in format'),
        ("tests.apps.no_such_module:app", 'Could not import module "tests.apps.no_such_module".'),
        ("tests.apps.echo:nope", 'Attribute "nope" not found in module "tests.apps.echo".'),
    ],
    ids=["format", "missing-module", "missing-attribute"],
)
def test_bad_app_exits_3_with_one_line_and_no_traceback(app: str, message: str) -> None:
    code, out = run_to_exit(app, "--port", "0")
    assert code == STARTUP_FAILURE
    [line] = error_lines(out)
    assert line.startswith("ERROR:    " + message)
    assert "Traceback" not in out


def test_port_in_use_exits_3_with_one_line(busy_port: int) -> None:
    code, out = run_to_exit(ECHO, "--port", str(busy_port))
    assert code == STARTUP_FAILURE
    assert error_lines(out) == [
        f"ERROR:    could not listen on 127.0.0.1:{busy_port}: Address already in use"
    ]
    assert "Traceback" not in out


def test_exception_in_the_app_module_exits_3_with_a_traceback() -> None:
    code, out = run_to_exit("tests.apps.broken_import:app", "--port", "0")
    assert code == STARTUP_FAILURE
    assert "Traceback (most recent call last):" in out
    assert 'tests/apps/broken_import.py", line 3, in <module>' in out
    assert error_lines(out)[-1] == (
        'ERROR:    Error while importing module "tests.apps.broken_import": '
        "RuntimeError: boom while importing the app module"
    )


# --------------------------------------------------------------------------- loading the app


def test_factory() -> None:
    args = ("tests.apps.factory:create_app", "--factory", "--port", "0")
    with cli_server(*args) as srv, httpx.Client(timeout=5) as client:
        assert client.get(srv.url).status_code == 204


def test_app_dir(tmp_path: Path) -> None:
    (tmp_path / "elsewhere_app.py").write_text(
        "from tests.apps.echo import app as echo\n\nasync def app(scope, receive, send):\n"
        "    await echo(scope, receive, send)\n"
    )
    with cli_server("elsewhere_app:app", "--app-dir", str(tmp_path), "--port", "0") as srv:
        assert get_json(srv.url)["path"] == "/"


def test_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("SLEIPNIR_TEST_GREETING=hello from the env file\n")
    with cli_server(ECHO, "--env-file", str(env_file), "--port", "0") as srv:
        assert get_json(srv.url)["greeting"] == "hello from the env file"


def test_python_m_sleipnir_and_app_from_env() -> None:
    # cli_server runs `python -m sleipnir`; here the app comes from SLEIPNIR_APP.
    with cli_server("--port", "0", env={"SLEIPNIR_APP": ECHO}) as srv:
        assert get_json(srv.url)["method"] == "GET"


# --------------------------------------------------------------------------- settings


def test_env_vars_apply_and_the_command_line_wins(busy_port: int) -> None:
    env = {"SLEIPNIR_PORT": str(busy_port), "SLEIPNIR_ROOT_PATH": "/from-env"}
    # SLEIPNIR_PORT names a busy port: only --port 0 from the command line lets this start.
    with cli_server(ECHO, "--port", "0", env=env) as srv:
        assert srv.port not in (0, busy_port)
        assert get_json(srv.url)["root_path"] == "/from-env"
    env["SLEIPNIR_PORT"] = "0"
    with cli_server(ECHO, "--root-path", "/from-cli", env=env) as srv:
        assert srv.port not in (0, 8000)  # SLEIPNIR_PORT=0 applied, not the default 8000
        assert get_json(srv.url)["root_path"] == "/from-cli"


def test_port_0_logs_the_real_port() -> None:
    with cli_server(ECHO, "--port", "0") as srv:
        assert srv.port > 0
        assert f"running on http://127.0.0.1:{srv.port} (Press CTRL+C to quit)" in srv.output
        assert get_json(srv.url)["server"] == ["127.0.0.1", srv.port]


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sleipnir", "--version"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
        env=dict(os.environ),
    )
    assert result.returncode == 0
    assert result.stdout.startswith(f"sleipnir {__version__} with ")
    assert result.stderr == ""


def test_console_script() -> None:
    script = Path(sys.executable).parent / "sleipnir"
    if not script.exists():
        pytest.skip("the sleipnir console script is not installed next to this Python")
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=15, check=False
    )
    assert (result.returncode, result.stdout.split()[:2]) == (0, ["sleipnir", __version__])


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_loops(loop: str) -> None:
    pytest.importorskip(loop)
    with cli_server(ECHO, "--loop", loop, "--port", "0") as srv:
        assert get_json(srv.url)["loop"].split(".")[0] == loop


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_parsers(http: str) -> None:
    pytest.importorskip(http)
    with cli_server(ECHO, "--http", http, "--port", "0") as srv, httpx.Client() as client:
        first = client.get(srv.url + "/a?x=1").json()
        second = client.post(srv.url + "/b", content=b"x" * 100_000).json()
    assert (first["path"], first["query_string"], first["http_version"]) == ("/a", "x=1", "1.1")
    assert (second["method"], second["client"]) == ("POST", first["client"])  # kept alive


def test_root_path() -> None:
    with cli_server(ECHO, "--root-path", "/api", "--port", "0") as srv:
        seen = get_json(srv.url + "/items?q=1")
    assert seen["root_path"] == "/api"
    assert (seen["path"], seen["raw_path"]) == ("/api/items", "/api/items")  # as uvicorn


# --------------------------------------------------------------------------- proxy headers

FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize(
    ("args", "trusted"),
    [
        ([], True),  # the default trusts 127.0.0.1
        (["--proxy-headers", "--forwarded-allow-ips", "127.0.0.1"], True),
        (["--forwarded-allow-ips", "10.0.0.1"], False),
        (["--no-proxy-headers"], False),
    ],
    ids=["default", "allowed", "other-peer", "off"],
)
def test_proxy_headers(args: list[str], trusted: bool) -> None:
    with cli_server(ECHO, "--port", "0", *args) as srv:
        seen = get_json(srv.url, headers=FORWARDED)
    if trusted:
        assert (seen["client"][0], seen["scheme"]) == ("203.0.113.7", "https")
    else:
        assert (seen["client"][0], seen["scheme"]) == ("127.0.0.1", "http")
        assert seen["client"][1] > 0
