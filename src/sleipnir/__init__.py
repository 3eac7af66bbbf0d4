"""sleipnir: a fast, production-minded ASGI server with uvicorn's command line and API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sleipnir._version import __version__

if TYPE_CHECKING:
    from sleipnir.config import Config
    from sleipnir.main import run
    from sleipnir.server import Server

__all__ = ["Config", "Server", "__version__", "run"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `sleipnir --version` does not load the server.
    if name == "Config":
        from sleipnir.config import Config

        return Config
    if name == "Server":
        from sleipnir.server import Server

        return Server
    if name == "run":
        from sleipnir.main import run

        return run
    raise AttributeError(f"module 'sleipnir' has no attribute {name!r}")
