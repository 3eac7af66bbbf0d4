"""Logging for sleipnir: default configuration, colour formatters, access log, trace, rate limiting.

Loggers
    ``sleipnir``         parent; carries the default (stderr) handler, does not propagate.
    ``sleipnir.error``   server messages; propagates to ``sleipnir``.
    ``sleipnir.access``  one INFO record per response; own (stdout) handler, does not propagate.

Log configs written for uvicorn name ``uvicorn.error`` / ``uvicorn.access`` and uvicorn's
formatter classes; sleipnir neither emits on those loggers nor reads uvicorn's formatter record
layout, so such configs must be renamed to the ``sleipnir.*`` loggers and formatters above.

Invariants
    * Hot path: :meth:`AccessLog.log` and :func:`trace_message` do no formatting and build no
      dict unless their logger is enabled for the level; the access line itself is rendered
      lazily, once, when the first handler formats the record.
    * :func:`configure_logging` never mutates the mapping it is given.
    * ``log_config=None`` leaves handlers and formatters alone (uvicorn's ``log_config=None``);
      ``log_level``, ``access_log`` and ``use_colors`` are still applied.
    * Colours are decided per handler stream (TTY, ``NO_COLOR`` unset) unless ``use_colors``
      is given; an explicit value overrides every sleipnir colour formatter.

The colour formatters follow the ``%(levelprefix)s`` convention of uvicorn's
``uvicorn/logging.py`` (read for the idea, not copied).
"""

from __future__ import annotations

import copy
import http
import json
import logging
import logging.config
import os
import re
import string
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from sleipnir.config import Config

__all__ = [
    "ACCESS_LOG_FIELDS",
    "DEFAULT_ACCESS_LOG_FORMAT",
    "LOGGING_CONFIG",
    "LOG_LEVELS",
    "TRACE_LOG_LEVEL",
    "AccessFormatter",
    "AccessLog",
    "ColourFormatter",
    "DefaultFormatter",
    "LogConfigError",
    "RateLimitedLog",
    "access_logger",
    "configure_logging",
    "error_logger",
    "resolve_log_level",
    "trace_message",
]

TRACE_LOG_LEVEL: Final = 5
logging.addLevelName(TRACE_LOG_LEVEL, "TRACE")

LOG_LEVELS: Final[Mapping[str, int]] = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE_LOG_LEVEL,
}

error_logger: Final = logging.getLogger("sleipnir.error")
access_logger: Final = logging.getLogger("sleipnir.access")
_LOGGER_NAMES: Final = ("sleipnir", "sleipnir.error", "sleipnir.access")

LOGGING_CONFIG: Final[dict[str, Any]] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "default": {
            "()": "sleipnir.logging.DefaultFormatter",
            "fmt": "%(levelprefix)s %(message)s",
            "use_colors": None,
        },
        "access": {
            "()": "sleipnir.logging.AccessFormatter",
            "fmt": "%(levelprefix)s %(message)s",
            "use_colors": None,
        },
    },
    "handlers": {
        "default": {
            "formatter": "default",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
        },
        "access": {
            "formatter": "access",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
        },
    },
    "loggers": {
        "sleipnir": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "sleipnir.error": {"level": "INFO"},
        "sleipnir.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}


class LogConfigError(Exception):
    """A ``--log-config`` / ``--log-level`` value could not be used (one-line message)."""


# --------------------------------------------------------------------------- colour formatters

_LEVEL_COLOURS: Final = {
    TRACE_LOG_LEVEL: "34",
    logging.DEBUG: "36",
    logging.INFO: "32",
    logging.WARNING: "33",
    logging.ERROR: "31",
    logging.CRITICAL: "91",
}
_STATUS_COLOURS: Final = {1: "97", 2: "32", 3: "33", 4: "31", 5: "91"}


def _style(text: str, code: str) -> str:
    return f"\033[{code}m{text}\033[0m"


def _stream_wants_colour(stream: object) -> bool:
    """Colours only for a TTY, and never when the ``NO_COLOR`` convention asks otherwise."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    if isatty is None:
        return False
    try:
        return bool(isatty())
    except (ValueError, OSError):  # closed or detached stream
        return False


class ColourFormatter(logging.Formatter):
    """Adds ``%(levelprefix)s`` (``"INFO:    "``, level name coloured when enabled).

    ``use_colors=None`` means "decide from the stream": :func:`configure_logging` resolves it
    per handler; a formatter used elsewhere falls back to :attr:`default_stream`. A record
    carrying ``extra={"color_message": ...}`` uses that message when colours are on.
    """

    default_stream: str = "stderr"  # attribute of ``sys`` consulted when use_colors is None

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Literal["%", "{", "$"] = "%",
        use_colors: bool | None = None,
    ) -> None:
        super().__init__(fmt=fmt, datefmt=datefmt, style=style)
        self.use_colors = use_colors

    def colours_enabled(self) -> bool:
        if self.use_colors is None:
            return _stream_wants_colour(getattr(sys, self.default_stream, None))
        return self.use_colors

    def formatMessage(self, record: logging.LogRecord) -> str:
        record = copy.copy(record)  # never leak our attributes to other handlers' formatters
        name = record.levelname
        padding = " " * max(0, 8 - len(name))
        if self.colours_enabled():
            code = _LEVEL_COLOURS.get(record.levelno)
            if code is not None:
                name = _style(name, code)
            self._colour_message(record)
        record.levelprefix = f"{name}:{padding}"
        return super().formatMessage(record)

    def _colour_message(self, record: logging.LogRecord) -> None:
        color_message = record.__dict__.get("color_message")
        if color_message is not None:
            record.msg = color_message
            record.message = record.getMessage()


class DefaultFormatter(ColourFormatter):
    """Formatter for ``sleipnir`` / ``sleipnir.error`` (stderr by default)."""


class AccessFormatter(ColourFormatter):
    """Formatter for ``sleipnir.access``: colours the status and bolds the request line."""

    default_stream = "stdout"

    def _colour_message(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, _AccessMessage):
            record.message = record.msg.coloured()
        else:
            super()._colour_message(record)


# --------------------------------------------------------------------------- configuration


def resolve_log_level(level: str | int) -> int:
    """``"debug"``/``"TRACE"``/``20`` → numeric level; unknown names raise LogConfigError."""
    if isinstance(level, int):
        return level
    try:
        return LOG_LEVELS[level.strip().lower()]
    except KeyError:
        valid = ", ".join(LOG_LEVELS)
        raise LogConfigError(f"unknown log level {level!r}; expected one of: {valid}") from None


def configure_logging(
    *,
    log_config: str | os.PathLike[str] | Mapping[str, Any] | None = LOGGING_CONFIG,
    log_level: str | int | None = None,
    access_log: bool = True,
    use_colors: bool | None = None,
) -> None:
    """Apply ``--log-config``, ``--log-level``, ``--no-access-log`` and ``--use-colors``.

    ``log_config`` is a dictConfig mapping, or a path: ``.json``, ``.yaml``/``.yml`` (needs
    PyYAML), anything else goes to :func:`logging.config.fileConfig` (``.ini``) with
    ``disable_existing_loggers=False``. ``None`` leaves the logging setup alone (uvicorn).
    """
    logging.addLevelName(TRACE_LOG_LEVEL, "TRACE")
    if log_config is not None:
        _apply_log_config(log_config)
    if log_level is not None:
        level = resolve_log_level(log_level)
        for name in _LOGGER_NAMES:
            logging.getLogger(name).setLevel(level)
    if not access_log:
        access_logger.handlers = []
        access_logger.propagate = False
        access_logger.disabled = True  # makes isEnabledFor() false: AccessLog skips all work
    _resolve_colours(use_colors)


def configure_from(config: Config) -> None:
    """``configure_logging`` with a Config's logging settings (the server and supervisor)."""
    configure_logging(
        log_config=config.log_config,
        log_level=config.log_level,
        access_log=config.access_log,
        use_colors=config.use_colors,
    )


def _apply_log_config(log_config: str | os.PathLike[str] | Mapping[str, Any]) -> None:
    if isinstance(log_config, Mapping):
        _dict_config(_copy_tree(log_config), "log config")
        return
    path = os.fspath(log_config)
    if not os.path.isfile(path):
        raise LogConfigError(f"log config file not found: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".json":
        _dict_config(_load_file(path, json.load), path)
    elif suffix in (".yaml", ".yml"):
        _dict_config(_load_file(path, _yaml_loader(path)), path)
    else:
        _file_config(path)


def _yaml_loader(path: str) -> Callable[[IO[str]], Any]:
    try:
        import yaml
    except ImportError:
        raise LogConfigError(
            f"reading YAML log config {path} needs PyYAML: pip install PyYAML "
            "(or sleipnir[standard])"
        ) from None
    return yaml.safe_load


def _load_file(path: str, load: Callable[[IO[str]], Any]) -> Any:
    try:
        with open(path, encoding="utf-8") as file:
            return load(file)
    except (OSError, ValueError) as exc:
        raise LogConfigError(f"cannot read log config {path}: {_one_line(exc)}") from exc
    except Exception as exc:  # yaml.YAMLError and friends
        raise LogConfigError(f"cannot parse log config {path}: {_one_line(exc)}") from exc


def _dict_config(config: object, source: str) -> None:
    if not isinstance(config, dict):
        raise LogConfigError(f"{source}: expected a mapping at the top level")
    try:
        logging.config.dictConfig(config)
    except (ValueError, TypeError, AttributeError, ImportError) as exc:
        raise LogConfigError(f"invalid {source}: {_one_line(exc)}") from exc


def _file_config(path: str) -> None:
    # See the note on fileConfig in the stdlib docs: existing loggers must stay enabled.
    try:
        logging.config.fileConfig(path, disable_existing_loggers=False)
    except Exception as exc:  # configparser, KeyError, ImportError, ...: all user input errors
        raise LogConfigError(f"invalid log config {path}: {_one_line(exc)}") from exc


def _copy_tree(value: Any) -> Any:
    """Copy dicts and lists (dictConfig may mutate them), keep leaves such as stream objects."""
    if isinstance(value, Mapping):
        return {key: _copy_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_tree(item) for item in value]
    return value


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _handlers() -> Iterator[logging.Handler]:
    seen: set[int] = set()
    for logger in (logging.getLogger(), *map(logging.getLogger, _LOGGER_NAMES)):
        for handler in logger.handlers:
            if id(handler) not in seen:
                seen.add(id(handler))
                yield handler


def reopen_log_files() -> None:
    """Reopen the files of every ``FileHandler`` on the root and sleipnir loggers (SIGUSR1,
    after logrotate moved them away). Safe from any thread."""
    for handler in _handlers():
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                if handler.stream is not None:  # (None: opened by the first emit, delay=True)
                    handler.stream.flush()
                    handler.stream.close()
                    handler.stream = handler._open()
            finally:
                handler.release()


def _resolve_colours(use_colors: bool | None) -> None:
    for handler in _handlers():
        formatter = handler.formatter
        if not isinstance(formatter, ColourFormatter):
            continue
        if use_colors is not None:
            formatter.use_colors = use_colors
        elif formatter.use_colors is None:
            formatter.use_colors = _stream_wants_colour(getattr(handler, "stream", None))


# --------------------------------------------------------------------------- access log

# Renders like uvicorn's default access line: 127.0.0.1:5000 - "GET / HTTP/1.1" 200 OK
DEFAULT_ACCESS_LOG_FORMAT: Final = '{client} - "{request_line}" {status} {status_phrase}'

_PHRASES: Final = {status.value: status.phrase for status in http.HTTPStatus}
# Representative values: the field list, and a trial run that validates format specs.
_SAMPLE_FIELDS: Final[Mapping[str, Any]] = {
    "client": "127.0.0.1:50000",
    "method": "GET",
    "path": "/",
    "query_string": "a=1",
    "request_line": "GET /?a=1 HTTP/1.1",
    "http_version": "1.1",
    "status": 200,
    "status_phrase": "OK",
    "bytes": 0,
    "duration_ms": 1.0,
    "duration_s": 0.001,
    "pid": 1,
}
ACCESS_LOG_FIELDS: Final = frozenset(_SAMPLE_FIELDS)
_FIELD_NAME_END: Final = re.compile(r"[.\[]")

_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):  # POSIX: keep the cached pid right in forked workers
    os.register_at_fork(after_in_child=_refresh_pid)


def _validate_access_format(fmt: str) -> None:
    valid = ", ".join(sorted(ACCESS_LOG_FIELDS))
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as exc:
        raise ValueError(f"invalid access log format {fmt!r}: {exc}") from None
    for _literal, field, _spec, _conversion in parsed:
        if field is None:
            continue
        name = _FIELD_NAME_END.split(field, maxsplit=1)[0]
        if name not in ACCESS_LOG_FIELDS:
            raise ValueError(
                f"unknown field {{{field}}} in access log format {fmt!r}; valid fields: {valid}"
            )
    try:
        fmt.format_map(_SAMPLE_FIELDS)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"invalid access log format {fmt!r}: {exc}") from None


class _AccessMessage:
    """The ``msg`` of an access record: rendered on first ``str()``, then cached."""

    __slots__ = ("_text", "fields", "template")

    def __init__(self, template: str, fields: dict[str, Any]) -> None:
        self.template = template
        self.fields = fields
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = self.template.format_map(self.fields)
        return self._text

    def coloured(self) -> str:
        fields = dict(self.fields)
        code = _STATUS_COLOURS.get(fields["status"] // 100)
        if code is not None:
            fields["status"] = _style(str(fields["status"]), code)
            fields["status_phrase"] = _style(fields["status_phrase"], code)
        fields["request_line"] = f"\033[1m{fields['request_line']}\033[0m"
        try:
            return self.template.format_map(fields)
        except (ValueError, TypeError):  # a format spec such as {status:d} needs the int
            return str(self)


class AccessLog:
    """Emits one INFO record per response on ``sleipnir.access``.

    ``fmt`` is a :meth:`str.format` template over :data:`ACCESS_LOG_FIELDS`; it is validated
    here (unknown field or bad spec → ValueError). The fields are also set on the record so
    custom formatters can use ``%(status)s``, ``%(duration_ms)s``, ...
    """

    __slots__ = ("_fmt", "_logger")

    def __init__(self, fmt: str = DEFAULT_ACCESS_LOG_FORMAT) -> None:
        _validate_access_format(fmt)
        self._fmt = fmt
        self._logger = access_logger

    @property
    def fmt(self) -> str:
        return self._fmt

    def log(
        self,
        client: tuple[str, int] | None,
        method: str,
        raw_path: bytes,
        query_string: bytes,
        http_version: str,
        status: int,
        bytes_sent: int,
        duration_s: float,
    ) -> None:
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        # backslashreplace: bytes outside ASCII are shown escaped, never decoded into the log.
        path = raw_path.decode("ascii", "backslashreplace")
        query = query_string.decode("ascii", "backslashreplace")
        target = f"{path}?{query}" if query else path
        fields: dict[str, Any] = {
            "client": f"{client[0]}:{client[1]}" if client else "-",
            "method": method,
            "path": path,
            "query_string": query,
            "request_line": f"{method} {target} HTTP/{http_version}",
            "http_version": http_version,
            "status": status,
            "status_phrase": _PHRASES.get(status, ""),
            "bytes": bytes_sent,
            "duration_ms": duration_s * 1000.0,
            "duration_s": duration_s,
            "pid": _pid,
        }
        # makeRecord + handle skips Logger._log's caller lookup (a stack walk per line).
        record = logger.makeRecord(
            logger.name, logging.INFO, "(access)", 0, _AccessMessage(self._fmt, fields), (), None
        )
        record.__dict__.update(fields)
        logger.handle(record)


# --------------------------------------------------------------------------- trace


def _summarise(message: Mapping[str, Any]) -> dict[str, Any]:
    summary = dict(message)
    for key in ("body", "bytes"):
        value = summary.get(key)
        if isinstance(value, (bytes, bytearray)):
            summary[key] = f"<{len(value)} bytes>"
        elif isinstance(value, memoryview):
            summary[key] = f"<{value.nbytes} bytes>"
    text = summary.get("text")
    if isinstance(text, str):
        summary["text"] = f"<{len(text)} chars>"
    return summary


def trace_message(logger: logging.Logger, prefix: str, message: Mapping[str, Any]) -> None:
    """Log an ASGI message at TRACE level, payloads replaced by their size."""
    if logger.isEnabledFor(TRACE_LOG_LEVEL):
        logger.log(TRACE_LOG_LEVEL, "%s %s", prefix, _summarise(message))


# --------------------------------------------------------------------------- rate limiting


class _Window:
    __slots__ = ("emitted", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.emitted = 0
        self.suppressed = 0


class RateLimitedLog:
    """At most ``limit`` lines per ``reason`` per ``window`` seconds (fixed windows).

    Lines over the limit are counted; when the reason's next window opens (or on
    :meth:`flush`) one line reports how many were suppressed. ``reason`` must come from a
    fixed set chosen by the code (e.g. ``"invalid-request"``), never from request data: the
    limiter keeps one small window per reason.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        limit: int = 10,
        window: float = 60.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("RateLimitedLog needs limit >= 1 and window > 0")
        self.logger = logger
        self.limit = limit
        self.window = window
        self.level = level
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def log(self, reason: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``reason`` is over its limit; True if a line was emitted."""
        if not self.logger.isEnabledFor(self.level):
            return False
        now = self._clock()
        window = self._windows.get(reason)
        if window is None or now - window.start >= self.window:
            if window is not None:
                self._report(reason, window)
            window = self._windows[reason] = _Window(now)
        if window.emitted >= self.limit:
            window.suppressed += 1
            return False
        window.emitted += 1
        self.logger.log(self.level, msg, *args)
        return True

    def flush(self) -> None:
        """Report pending suppressed counts now (e.g. at shutdown) and reset all windows."""
        for reason, window in self._windows.items():
            self._report(reason, window)
        self._windows.clear()

    def _report(self, reason: str, window: _Window) -> None:
        if window.suppressed:
            self.logger.log(
                self.level,
                "%s: %d similar message(s) suppressed in the last %gs",
                reason,
                window.suppressed,
                self.window,
            )
