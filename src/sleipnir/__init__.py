"""sleipnir: a fast, production-minded ASGI server with uvicorn's command line and API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sleipnir._version import __version__

if TYPE_CHECKING:
    from sleipnir.config import Config
    from sleipnir.server import Server, run

__all__ = ["Config", "Server", "__version__", "run"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `sleipnir --version` does not load the server.
    if name == "Config":
        from sleipnir.config import Config

        return Config
    if name in ("Server", "run"):
        from sleipnir import server

        return getattr(server, name)
    raise AttributeError(f"module 'sleipnir' has no attribute {name!r}")
