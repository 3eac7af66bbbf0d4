"""sleipnir: a fast, production-minded ASGI server with uvicorn's command line and API."""

from sleipnir._version import __version__
from sleipnir.config import Config
from sleipnir.server import Server, run

__all__ = ["Config", "Server", "__version__", "run"]
