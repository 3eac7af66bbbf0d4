"""The two classes of the ASGI bridge that derive from builtins.

They live apart from ``http_cycle`` because that module can be compiled with mypyc
(docs/architecture.md, "Compiled build"), which cannot compile a subclass of ``dict`` or of
``RuntimeError``; kept here, they are ordinary Python classes in either build.
"""

from __future__ import annotations

from typing import Any, NoReturn


class ASGIError(RuntimeError):
    """The application broke the ASGI message contract."""


class ReadOnlyOptions(dict[str, Any]):
    """The (empty) options of an advertised extension: one object shared by every scope, so
    read-only (an app cannot change what the next request sees; still a dict to the app)."""

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("the options of an ASGI extension are read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only
