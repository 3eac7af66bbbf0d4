"""Running a configuration: one server in this process, or a supervisor and its workers.

As ``uvicorn.main``: ``run(app, **settings)`` for Python callers, ``run_config`` for the CLI.
Nothing here imports the protocol code until a server runs in this very process, so that a
supervisor never loads it (``sleipnir.supervisor``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sleipnir.config import Config
    from sleipnir.types import ASGIApp

STARTUP_FAILURE = 3  # the exit status of a server, supervisor or worker that could not start
logger = logging.getLogger("sleipnir.error")


def supervised(config: Config) -> bool:
    """True when ``config`` runs a supervisor (several workers, or --reload)."""
    return config.workers > 1 or config.reload


def run_config(config: Config) -> None:
    """Serve ``config``; raises SystemExit(3) when it could not start, SystemExit(2) when it
    cannot run as asked."""
    from sleipnir.config import load_env_file

    if config.env_file:
        load_env_file(config)
    if supervised(config):
        _run_supervisor(config)
        return
    from sleipnir.server import Server, StartupError

    server = Server(config)
    try:
        server.run()
    except StartupError as exc:
        logger.error("%s", exc)
        raise SystemExit(STARTUP_FAILURE) from None
    except KeyboardInterrupt:  # pragma: no cover - a signal before the handlers were set
        pass
    if not server.started or server.shutdown_failed:
        raise SystemExit(STARTUP_FAILURE)


def _run_supervisor(config: Config) -> None:
    from sleipnir.logging import LogConfigError, configure_from
    from sleipnir.supervisor import Supervisor, check_supervisable

    problem = check_supervisable(config)
    if problem:
        _usage_error(problem)
    try:
        configure_from(config)
    except LogConfigError as exc:
        print(f"sleipnir: error: {exc}", file=sys.stderr)
        raise SystemExit(STARTUP_FAILURE) from None
    code = Supervisor(config).run()
    if code:
        raise SystemExit(code)


def _usage_error(message: str) -> None:
    print(f"sleipnir: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(app: ASGIApp | Callable[..., Any] | str, **settings: Any) -> None:
    """Serve ``app`` (an ASGI app, a factory with factory=True, or "module:attr")."""
    from sleipnir.config import Config

    run_config(Config(app, **settings))
