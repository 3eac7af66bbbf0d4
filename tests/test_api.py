"""The public Python API, pinned: ``sleipnir.run``, ``sleipnir.Config``, ``sleipnir.Server``.

A uvicorn user switches by changing the word ``uvicorn`` to ``sleipnir``; these names and call
shapes are that promise.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

import httpx
import pytest

import sleipnir
from apps.echo import app as echo_app
from conftest import STARTUP_TIMEOUT_S, CLIServer, start_process, wait_for
from sleipnir.config import Config as ConfigClass
from sleipnir.server import Server as ServerClass


def test_all() -> None:
    assert sleipnir.__all__ == ["Config", "Server", "__version__", "run"]
    for name in sleipnir.__all__:
        assert getattr(sleipnir, name) is not None
    assert isinstance(sleipnir.__version__, str)


def test_names_are_the_implementations() -> None:
    assert sleipnir.Config is ConfigClass
    assert sleipnir.Server is ServerClass
    assert callable(sleipnir.run)


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        sleipnir.nope  # noqa: B018


def test_importing_the_package_does_not_load_the_server() -> None:
    code = "import sys, sleipnir; print('sleipnir.server' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=15, check=True
    )
    assert result.stdout.strip() == "False"


def test_run_signature() -> None:
    parameters = inspect.signature(sleipnir.run).parameters
    assert list(parameters) == ["app", "settings"]
    assert parameters["settings"].kind is inspect.Parameter.VAR_KEYWORD


def test_server_shape() -> None:
    server = sleipnir.Server(sleipnir.Config(echo_app))
    assert server.should_exit is False
    assert server.started is False
    assert server.force_exit is False
    assert server.config.app is echo_app
    for method in (sleipnir.Server.run, sleipnir.Server.serve):
        sockets = inspect.signature(method).parameters["sockets"]
        assert sockets.default is None
    assert inspect.iscoroutinefunction(sleipnir.Server.serve)
    assert not inspect.iscoroutinefunction(sleipnir.Server.run)


def test_config_takes_uvicorn_keyword_names() -> None:
    config = sleipnir.Config(
        "main:app",
        host="0.0.0.0",
        port=9000,
        log_level="debug",
        proxy_headers=False,
        timeout_keep_alive=10,
        limit_concurrency=100,
        root_path="/api",
        lifespan="on",
        access_log=False,
    )
    assert (config.app, config.host, config.port, config.log_level) == (
        "main:app",
        "0.0.0.0",
        9000,
        "debug",
    )
    assert (config.timeout_keep_alive, config.limit_concurrency, config.root_path) == (
        10,
        100,
        "/api",
    )
    with pytest.raises(TypeError, match="unexpected keyword argument 'prot'"):
        sleipnir.Config("main:app", prot=1)


# --------------------------------------------------------------------------- serving


def serve_in_thread(server: sleipnir.Server, target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), STARTUP_TIMEOUT_S, "startup")
    assert server.started
    return thread


def url_of(server: sleipnir.Server) -> str:
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"http://{host}:{port}"


@pytest.mark.parametrize("how", ["run", "serve"])
def test_uvicorn_style_config_and_server(how: str) -> None:
    config = sleipnir.Config(echo_app, host="127.0.0.1", port=0, log_config=None)
    server = sleipnir.Server(config)
    if how == "run":
        thread = serve_in_thread(server, server.run)
    else:
        thread = serve_in_thread(server, lambda: asyncio.run(server.serve()))
    try:
        with httpx.Client(timeout=5) as client:
            assert client.get(url_of(server) + "/api").json()["path"] == "/api"
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive()


def start_python(code: str) -> CLIServer:
    """``python -c CODE`` in the repository, output collected like conftest.start_cli."""
    return start_process([sys.executable, "-c", code])


def test_sleipnir_run_serves_an_import_string() -> None:
    srv = start_python(
        "import sleipnir\n"
        "sleipnir.run('tests.apps.echo:app', host='127.0.0.1', port=0, root_path='/r')\n"
    )
    try:
        port = srv.wait_output(r"running on http://127\.0\.0\.1:(\d+)").group(1)
        with httpx.Client(timeout=5) as client:
            seen = client.get(f"http://127.0.0.1:{port}/x").json()
        assert (seen["root_path"], seen["path"]) == ("/r", "/r/x")
    finally:
        code = srv.stop(signal.SIGTERM)
    assert code == 0
    assert "Traceback" not in srv.output


def test_sleipnir_run_exits_3_when_the_app_cannot_start() -> None:
    srv = start_python("import sleipnir\nsleipnir.run('tests.apps.no_such_module:app', port=0)\n")
    try:
        assert srv.wait(timeout=15) == 3
    finally:
        srv.stop()
    assert 'ERROR:    Could not import module "tests.apps.no_such_module".' in srv.output
    assert "Traceback" not in srv.output


def test_server_run_in_the_main_thread_restores_signal_handlers() -> None:
    # An embedding program's own handlers survive a run (uvicorn restores them too).
    assert threading.current_thread() is threading.main_thread()
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = sleipnir.Server(sleipnir.Config(echo_app, port=0, log_config=None))

        def stop_when_started() -> None:
            wait_for(lambda: server.started, STARTUP_TIMEOUT_S, "startup")
            server.should_exit = True

        stopper = threading.Thread(target=stop_when_started, daemon=True)
        stopper.start()
        server.run()
        stopper.join(10)
        assert signal.getsignal(signal.SIGTERM) is handler
        assert signal.getsignal(signal.SIGINT) is handler
        signal.raise_signal(signal.SIGTERM)
        assert received == [signal.SIGTERM]
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
