"""Load the application: ``"module:attr"`` strings, ``--factory``, ``--app-dir``, ``--interface``.

Error reporting follows one project rule: a traceback is shown only for an exception raised
inside the application's own code (executing its module, calling its factory); everything else
(a module or attribute that does not exist, a malformed import string, an object that is not an
app) is a one-line message. :class:`AppLoadError` carries that decision in ``show_traceback``
and, when it is true, the original exception in ``__cause__``.

Ideas taken from uvicorn (``uvicorn/importer.py``: telling "the module itself is missing" from
"the module failed to import" with ``ModuleNotFoundError.name``; ``uvicorn/config.py``: the
auto-detection order class -> coroutine function -> coroutine ``__call__``). The code is ours.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import sys
from typing import Any, cast

from sleipnir.asgi.wsgi import WSGIMiddleware
from sleipnir.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "INTERFACES",
    "ASGI2Adapter",
    "AppLoadError",
    "detect_interface",
    "import_from_string",
    "load_app",
]

INTERFACES = ("auto", "asgi3", "asgi2", "wsgi")


class AppLoadError(Exception):
    """The application could not be loaded; the message is one line saying why.

    ``show_traceback`` is true when the failure is an exception raised by the application's own
    code; the server then prints the traceback of ``__cause__`` as well as the message.
    """

    def __init__(self, message: str, *, show_traceback: bool = False) -> None:
        super().__init__(message)
        self.show_traceback = show_traceback


class ASGI2Adapter:
    """Serve an ASGI 2 ("double callable") application through the ASGI 3 interface."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        instance = self.app(scope)
        await instance(receive, send)


# --------------------------------------------------------------------------- import strings


def import_from_string(import_str: str) -> Any:
    """Import ``"package.module:attr.sub"`` and return the attribute."""
    module_name, attrs = _split_import_string(import_str)
    module = _import_module(module_name)
    return _resolve_attrs(module, module_name, attrs)


def _split_import_string(import_str: str) -> tuple[str, str]:
    module_name, _, attrs = import_str.partition(":")
    parts = [*module_name.split("."), *attrs.split(".")]
    if not all(parts):  # empty module, empty attribute, relative or "a..b" names
        raise AppLoadError(
            f'Import string "{import_str}" must be in format "<module>:<attribute>".'
        )
    return module_name, attrs


def _import_module(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if _is_target_missing(exc.name, module_name):
            raise AppLoadError(f'Could not import module "{module_name}".') from None
        raise _raised_by_app(f'Error while importing module "{module_name}"', exc) from exc
    except Exception as exc:
        raise _raised_by_app(f'Error while importing module "{module_name}"', exc) from exc


def _is_target_missing(missing: str | None, module_name: str) -> bool:
    """True if the module that was not found is ``module_name`` or one of its parents.

    A dependency the app's module imports has some other name: that is the app's own error.
    """
    if missing is None:
        return False
    return module_name == missing or module_name.startswith(missing + ".")


def _resolve_attrs(module: Any, module_name: str, attrs: str) -> Any:
    obj = module
    for attr in attrs.split("."):
        obj = _get_attr(obj, attr, module_name, attrs)
    return obj


def _get_attr(obj: Any, attr: str, module_name: str, attrs: str) -> Any:
    try:
        return getattr(obj, attr)
    except AttributeError:
        message = f'Attribute "{attrs}" not found in module "{module_name}".'
        raise AppLoadError(message) from None
    except Exception as exc:  # a module-level __getattr__ or a property: app code
        message = f'Error while reading "{attrs}" from module "{module_name}"'
        raise _raised_by_app(message, exc) from exc


def _raised_by_app(context: str, exc: BaseException) -> AppLoadError:
    return AppLoadError(f"{context}: {_one_line(exc)}", show_traceback=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    name = type(exc).__name__
    return f"{name}: {text[0]}" if text else name


# --------------------------------------------------------------------------- loading


def load_app(
    app: Any,
    *,
    factory: bool = False,
    app_dir: str | None = None,
    interface: str = "auto",
) -> ASGIApp:
    """Resolve ``app`` (an import string or an object) into an ASGI 3 callable.

    ``app_dir`` is put first on ``sys.path`` (``None`` leaves ``sys.path`` alone). With
    ``factory`` the loaded object is called with no arguments and its result is the app; without
    it the object is used as is, even if it looks like a factory. ``interface`` is one of
    :data:`INTERFACES`; ``"auto"`` picks with :func:`detect_interface`.
    """
    if interface not in INTERFACES:
        choices = ", ".join(INTERFACES)
        raise AppLoadError(f'Unknown interface "{interface}"; expected one of: {choices}.')
    if app_dir is not None:
        _prepend_sys_path(app_dir)
    name = _describe(app)
    loaded = import_from_string(app) if isinstance(app, str) else app
    if factory:
        loaded = _call_factory(loaded, name)
    if not callable(loaded):
        kind = f"App factory {name} returned" if factory else f"App {name} is"
        raise AppLoadError(f"{kind} {type(loaded).__name__!r}, which is not callable.")
    if interface == "auto":
        interface = detect_interface(loaded)
    return _adapt(loaded, interface)


def _prepend_sys_path(app_dir: str) -> None:
    if not sys.path or sys.path[0] != app_dir:
        sys.path.insert(0, app_dir)


def _describe(app: Any) -> str:
    if isinstance(app, str):
        return f'"{app}"'
    name = getattr(app, "__qualname__", None)
    return f'"{name}"' if isinstance(name, str) else repr(app)


def _call_factory(factory: Any, name: str) -> Any:
    if not callable(factory):
        raise AppLoadError(f"App factory {name} is not callable.")
    try:
        return factory()
    except Exception as exc:
        # Raised inside the factory -> its frame follows ours in the traceback. Raised by the
        # call itself (the factory needs arguments) -> it does not, and a traceback adds nothing.
        tb = exc.__traceback__
        inside = tb is not None and tb.tb_next is not None
        message = f"Error calling app factory {name}: {_one_line(exc)}"
        raise AppLoadError(message, show_traceback=inside) from exc


def _adapt(app: Any, interface: str) -> ASGIApp:
    if interface == "asgi2":
        return ASGI2Adapter(app)
    if interface == "wsgi":
        return WSGIMiddleware(app)
    return cast(ASGIApp, app)


# --------------------------------------------------------------------------- detection


def detect_interface(app: Any) -> str:
    """``"asgi3"`` or ``"asgi2"`` for a loaded app, as ``--interface auto`` decides.

    A class is ASGI 2 (instantiating it with the scope gives the per-connection callable). A
    callable is ASGI 3 when calling it runs a coroutine function that accepts
    ``(scope, receive, send)``; functions, bound methods, ``functools.partial`` and objects
    with an ``async def __call__`` are all recognised. Anything else is ASGI 2. WSGI is never
    guessed: it needs ``--interface wsgi``.
    """
    if inspect.isclass(app):
        return "asgi2"
    if _is_coroutine_callable(app) and _accepts_three_arguments(app):
        return "asgi3"
    return "asgi2"


def _is_coroutine_callable(app: Any) -> bool:
    if _is_coroutine_function(app):  # functions, methods, partials of them
        return True
    base = app
    while isinstance(base, functools.partial):
        base = base.func
    return _is_coroutine_function(getattr(base, "__call__", None))  # noqa: B004


def _is_coroutine_function(func: Any) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    # Before 3.12 some libraries (asgiref's markcoroutinefunction) mark sync-looking callables
    # in a way only asyncio's check recognises; from 3.12 on they use inspect's own marker.
    return sys.version_info < (3, 12) and asyncio.iscoroutinefunction(func)


def _accepts_three_arguments(app: Any) -> bool:
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):  # not introspectable: trust that it is a coroutine
        return True
    try:
        signature.bind(None, None, None)
    except TypeError:
        return False
    return True
