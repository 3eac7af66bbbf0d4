"""Loading apps: import strings, --app-dir, --factory, --interface and their error messages."""

from __future__ import annotations

import asyncio
import functools
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sleipnir.asgi.wsgi import WSGIMiddleware
from sleipnir.importer import (
    AppLoadError,
    ASGI2Adapter,
    detect_interface,
    import_from_string,
    load_app,
)
from sleipnir.types import ASGIApp, Message, Receive, Scope, Send

TESTS_DIR = str(Path(__file__).parent)


@pytest.fixture(autouse=True)
def _restore_import_state() -> Iterator[None]:
    """Each test starts from the same sys.path and without the fixture modules imported."""
    saved_path = sys.path[:]
    yield
    sys.path[:] = saved_path
    for name in [n for n in sys.modules if n == "apps" or n.startswith(("apps.", "tmp_app_"))]:
        del sys.modules[name]


def load(app: Any, **kwargs: Any) -> ASGIApp:
    kwargs.setdefault("app_dir", TESTS_DIR)
    return load_app(app, **kwargs)


def call_http(app: ASGIApp, path: str = "/") -> list[Message]:
    """Run one HTTP request through an ASGI 3 app with an in-memory receive/send."""
    sent: list[Message] = []
    scope: Scope = {"type": "http", "method": "GET", "path": path, "headers": []}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    async def main() -> None:
        await app(scope, receive, send)

    asyncio.run(main())
    return sent


def body_of(messages: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def load_error(app: Any, **kwargs: Any) -> AppLoadError:
    with pytest.raises(AppLoadError) as info:
        load(app, **kwargs)
    return info.value


# --------------------------------------------------------------------------- import strings


def test_import_from_string_returns_the_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(TESTS_DIR)
    module = importlib.import_module("apps.asgi3")
    assert import_from_string("apps.asgi3:app") is module.app
    assert import_from_string("apps.asgi3:container.app") is module.app


@pytest.mark.parametrize(
    "import_str", ["apps.asgi3", "apps.asgi3:", ":app", ".asgi3:app", "apps..asgi3:app", "a:b..c"]
)
def test_malformed_import_string(import_str: str) -> None:
    error = load_error(import_str)
    assert str(error) == f'Import string "{import_str}" must be in format "<module>:<attribute>".'
    assert error.show_traceback is False


@pytest.mark.parametrize("module", ["apps.no_such_module", "sleipnir_tests_no_such_package.app"])
def test_missing_module_is_a_one_line_error(module: str) -> None:
    error = load_error(f"{module}:app")
    assert str(error) == f'Could not import module "{module}".'
    assert error.show_traceback is False
    assert error.__cause__ is None


def test_missing_attribute_is_a_one_line_error() -> None:
    error = load_error("apps.asgi3:nope.app")
    assert str(error) == 'Attribute "nope.app" not found in module "apps.asgi3".'
    assert error.show_traceback is False
    assert error.__cause__ is None


def test_exception_in_app_module_shows_traceback() -> None:
    error = load_error("apps.broken_import:app")
    assert str(error) == (
        'Error while importing module "apps.broken_import": '
        "RuntimeError: boom while importing the app module"
    )
    assert error.show_traceback is True
    assert isinstance(error.__cause__, RuntimeError)


def test_missing_dependency_of_app_module_shows_traceback() -> None:
    error = load_error("apps.missing_dependency:app")
    assert error.show_traceback is True
    assert isinstance(error.__cause__, ModuleNotFoundError)
    assert error.__cause__.name == "sleipnir_tests_no_such_dependency"
    assert "No module named 'sleipnir_tests_no_such_dependency'" in str(error)


def test_syntax_error_in_app_module_shows_traceback(tmp_path: Path) -> None:
    (tmp_path / "tmp_app_syntax.py").write_text("async def app(:\n    pass\n")
    importlib.invalidate_caches()
    error = load_error("tmp_app_syntax:app", app_dir=str(tmp_path))
    assert error.show_traceback is True
    assert isinstance(error.__cause__, SyntaxError)
    assert str(error).startswith('Error while importing module "tmp_app_syntax": SyntaxError')


def test_module_not_found_error_without_a_name_shows_traceback(tmp_path: Path) -> None:
    (tmp_path / "tmp_app_raises_mnfe.py").write_text("raise ModuleNotFoundError('custom')\n")
    importlib.invalidate_caches()
    error = load_error("tmp_app_raises_mnfe:app", app_dir=str(tmp_path))
    assert error.show_traceback is True
    assert str(error).endswith("ModuleNotFoundError: custom")


def test_exception_from_module_getattr_shows_traceback() -> None:
    error = load_error("apps.lazy_attribute:app")
    assert error.show_traceback is True
    assert isinstance(error.__cause__, RuntimeError)
    missing = load_error("apps.lazy_attribute:other")
    assert str(missing) == 'Attribute "other" not found in module "apps.lazy_attribute".'
    assert missing.show_traceback is False


# --------------------------------------------------------------------------- app_dir


def test_app_dir_is_put_first_on_sys_path_once() -> None:
    load("apps.asgi3:app")
    assert sys.path[0] == TESTS_DIR
    load("apps.asgi3:app")
    assert sys.path[1] != TESTS_DIR


def test_app_dir_none_leaves_sys_path_alone() -> None:
    before = sys.path[:]
    load_app(call_http, app_dir=None)
    assert sys.path == before


def test_app_dir_makes_the_module_importable() -> None:
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(TESTS_DIR)]
    error = load_error("apps.asgi3:app", app_dir=None)
    assert str(error) == 'Could not import module "apps.asgi3".'
    assert body_of(call_http(load("apps.asgi3:app"))) == b"asgi3"


# --------------------------------------------------------------------------- interfaces


@pytest.mark.parametrize(
    ("attr", "body"),
    [
        ("app", b"asgi3"),
        ("callable_app", b"callable"),
        ("bound_method_app", b"method"),
        ("partial_app", b"partial"),
        ("container.app", b"asgi3"),
    ],
)
def test_asgi3_apps_are_used_as_they_are(attr: str, body: bytes) -> None:
    app = load(f"apps.asgi3:{attr}")
    assert app is import_from_string(f"apps.asgi3:{attr}")
    assert body_of(call_http(app)) == body


@pytest.mark.parametrize(("attr", "body"), [("App", b"asgi2 class /x"), ("app", b"asgi2 function")])
def test_asgi2_apps_are_adapted(attr: str, body: bytes) -> None:
    app = load(f"apps.asgi2:{attr}")
    assert isinstance(app, ASGI2Adapter)
    assert body_of(call_http(app, "/x")) == body


def test_explicit_interface_overrides_detection() -> None:
    assert isinstance(load("apps.asgi3:app", interface="asgi2"), ASGI2Adapter)
    assert not isinstance(load("apps.asgi2:App", interface="asgi3"), ASGI2Adapter)


def test_wsgi_interface_wraps_in_middleware() -> None:
    app = load("apps.wsgi_app:app", interface="wsgi")
    assert isinstance(app, WSGIMiddleware)
    try:
        assert body_of(call_http(app, "/hello")) == b"GET /hello "
    finally:
        app.executor.shutdown()


def test_wsgi_app_is_not_guessed() -> None:
    assert isinstance(load("apps.wsgi_app:app"), ASGI2Adapter)


def test_unknown_interface() -> None:
    error = load_error("apps.asgi3:app", interface="asgi4")
    assert str(error) == 'Unknown interface "asgi4"; expected one of: auto, asgi3, asgi2, wsgi.'
    assert error.show_traceback is False


def test_objects_are_accepted_as_well_as_strings() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        pass

    assert load_app(app) is app


async def _three(scope: Scope, receive: Receive, send: Send) -> None:
    pass


async def _varargs(*args: Any) -> None:
    pass


async def _two(scope: Scope, receive: Receive) -> None:
    pass


async def _four(scope: Scope, receive: Receive, send: Send, extra: int) -> None:
    pass


def _sync(scope: Scope, receive: Receive, send: Send) -> None:
    pass


class _AsyncCall:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pass


class _SyncCall:
    def __call__(self, scope: Scope) -> Any:
        return _three


async def _unintrospectable(scope: Scope, receive: Receive, send: Send) -> None:
    pass


_unintrospectable.__signature__ = "not a signature"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        (_three, "asgi3"),
        (_varargs, "asgi3"),
        (functools.partial(_four, extra=1), "asgi3"),
        (functools.partial(_AsyncCall()), "asgi3"),
        (_AsyncCall(), "asgi3"),
        (_AsyncCall, "asgi2"),
        (_SyncCall(), "asgi2"),
        (_two, "asgi2"),
        (_four, "asgi2"),
        (_sync, "asgi2"),
        (_unintrospectable, "asgi3"),  # a coroutine function whose signature cannot be read
    ],
)
def test_detect_interface(app: Any, expected: str) -> None:
    assert detect_interface(app) == expected


# --------------------------------------------------------------------------- factories


def test_factory_is_called() -> None:
    app = load("apps.factory:create_app", factory=True)
    assert call_http(app)[0]["status"] == 204


def test_factory_looking_object_is_not_called_without_factory_flag() -> None:
    app = load("apps.factory:create_app")
    module = sys.modules["apps.factory"]
    assert module.calls == 0
    assert isinstance(app, ASGI2Adapter)
    assert app.app is module.create_app


def test_factory_exception_shows_traceback() -> None:
    error = load_error("apps.factory:broken_factory", factory=True)
    assert str(error) == (
        'Error calling app factory "apps.factory:broken_factory": RuntimeError: factory exploded'
    )
    assert error.show_traceback is True
    assert isinstance(error.__cause__, RuntimeError)


def test_factory_that_needs_arguments_is_a_one_line_error() -> None:
    error = load_error("apps.factory:needs_arguments", factory=True)
    assert str(error).startswith('Error calling app factory "apps.factory:needs_arguments": Type')
    assert error.show_traceback is False


def test_factory_that_is_not_callable() -> None:
    error = load_error("apps.factory:not_callable", factory=True)
    assert str(error) == 'App factory "apps.factory:not_callable" is not callable.'
    assert error.show_traceback is False


def test_factory_returning_a_non_app() -> None:
    error = load_error("apps.factory:returns_none", factory=True)
    assert str(error) == (
        "App factory \"apps.factory:returns_none\" returned 'NoneType', which is not callable."
    )
    assert error.show_traceback is False


def test_app_that_is_not_callable() -> None:
    error = load_error("apps.factory:not_callable")
    assert str(error) == "App \"apps.factory:not_callable\" is 'int', which is not callable."
    assert error.show_traceback is False


def test_factory_given_as_object() -> None:
    def make() -> ASGIApp:
        return _three

    assert load_app(make, factory=True) is _three
    loaded: object = load_app(make, interface="asgi3")
    assert loaded is make  # no --factory: used as it is


def test_asgi2_adapter_passes_scope_receive_and_send() -> None:
    seen: list[Any] = []

    def app(scope: Scope) -> Any:
        async def instance(receive: Receive, send: Send) -> None:
            seen.extend([scope, receive, send])

        return instance

    async def receive() -> Message:
        return {}

    async def send(message: Message) -> None:
        pass

    scope: Scope = {"type": "http"}
    asyncio.run(ASGI2Adapter(app)(scope, receive, send))
    assert seen == [scope, receive, send]
