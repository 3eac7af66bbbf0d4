"""Every sleipnir setting, declared once, and the `Config` object built from them.

`SETTINGS` is the single source of truth: the command line (`cli.py`), the `SLEIPNIR_<NAME>`
environment variables and `docs/settings.md` (`python -m sleipnir._docgen`) are generated from
it. `Config(app, **settings)` accepts exactly the declared names, the same ones `uvicorn.Config`
uses, checks and coerces the values and stores them as plain attributes, so it pickles cleanly.
"""

from __future__ import annotations

import copy
import os
import re
import ssl
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sleipnir.logging import (
    ACCESS_LOG_FIELDS,
    DEFAULT_ACCESS_LOG_FORMAT,
    LOG_LEVELS,
    LOGGING_CONFIG,
)
from sleipnir.transport.listen import parse_bind

__all__ = [
    "SETTINGS",
    "Config",
    "Setting",
    "load_env_file",
    "parse_text",
]

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


@dataclass(frozen=True)
class Setting:
    """One setting: its Python name, how it is typed, parsed, shown and documented."""

    name: str
    type: type[Any]  # str, int, float or bool; `object` for Python-API-only values
    default: Any
    help: str
    group: str
    flags: tuple[str, ...] = ()  # empty: Python API only, no flag and no env var
    bool_style: Literal["pair", "switch", "value"] = "pair"  # --x/--no-x, --x, --x BOOLEAN
    choices: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()  # accepted spellings mapped to a choice
    multiple: bool = False  # repeatable flag, stored as a list
    metavar: str | None = None
    nullable: bool = False  # None is a valid value (always true when the default is None)
    minimum: float | None = None
    maximum: float | None = None
    default_text: str | None = None  # how the docs show a default resolved at run time
    env_separator: str = ","  # splits a repeatable setting's environment variable
    must_exist: bool = False  # the value is a path that must exist when Config is built
    env: str | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", f"SLEIPNIR_{self.name.upper()}" if self.flags else None)
        if self.default is None:
            object.__setattr__(self, "nullable", True)

    @property
    def is_flag(self) -> bool:
        """True when the flag takes no value (`--reload`, `--access-log/--no-access-log`)."""
        return self.type is bool and self.bool_style != "value"


def _flag(name: str) -> tuple[str, ...]:
    return ("--" + name.replace("_", "-"),)


def _s(name: str, type_: type[Any], default: Any, help: str, group: str, **kw: Any) -> Setting:
    """Declare a setting whose flag is its name in kebab case (pass flags=() for API only)."""
    kw.setdefault("flags", _flag(name))
    return Setting(name, type_, default, help, group, **kw)


_BIND, _APP, _PROTO, _HTTP = "Binding", "Application", "Protocols", "HTTP"
_LIMITS, _TIMEOUTS, _LOGGING, _TLS, _PROC = "Limits", "Timeouts", "Logging", "TLS", "Processes"

# fmt: off
SETTINGS: tuple[Setting, ...] = (
    # Binding
    _s("host", str, "127.0.0.1", "Address to listen on; an IPv6 address selects IPv6.", _BIND),
    _s("port", int, 8000, "TCP port to listen on; 0 asks the OS for a free one.", _BIND,
       minimum=0, maximum=65535),
    _s("uds", str, None, "Listen on this UNIX domain socket path instead of host/port.", _BIND,
       metavar="PATH"),
    _s("fd", int, None, "Serve on an already-open socket, given by its file descriptor.", _BIND,
       minimum=0),
    _s("bind", str, (), "Listen here too: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N; repeat "
       "for more. When given, --host/--port are used only if set as well.", _BIND,
       multiple=True, metavar="ADDRESS"),
    _s("reuse_port", bool, False, "With several workers: give each worker its own "
       "SO_REUSEPORT listening socket, so the kernel spreads connections evenly.", _BIND,
       bool_style="switch"),
    _s("backlog", int, 2048, "Length of the kernel's queue of not-yet-accepted connections.",
       _BIND, minimum=1),
    # Application
    _s("app_dir", str, "", "Directory added to the front of sys.path before APP is imported.",
       _APP, metavar="DIR", default_text="the current directory"),
    _s("factory", bool, False, "APP names a zero-argument callable that returns the "
       "application; call it once at startup.", _APP, bool_style="switch"),
    _s("interface", str, "auto", "Calling convention of the application; auto detects ASGI 3 "
       "or ASGI 2.", _APP, choices=("auto", "asgi3", "asgi2", "wsgi")),
    _s("lifespan", str, "auto", "Lifespan protocol: on requires the app to support it, off "
       "never sends it, auto tries and carries on if the app refuses.", _APP,
       choices=("auto", "on", "off")),
    _s("root_path", str, "", "ASGI root_path: the URL prefix the app is mounted under behind "
       "a proxy.", _APP, metavar="PATH"),
    _s("env_file", str, None, "Load environment variables from this dotenv file before "
       "importing APP (needs python-dotenv).", _APP, metavar="PATH", must_exist=True),
    _s("reset_contextvars", bool, False, "Give every request a fresh contextvars context "
       "instead of a copy of the one the lifespan ran in.", _APP, bool_style="switch"),
    # Protocols
    _s("loop", str, "auto", "Event loop: auto picks uvloop when installed, else asyncio.",
       _PROTO, choices=("auto", "asyncio", "uvloop"), aliases=(("none", "asyncio"),)),
    _s("http", str, "auto", "HTTP/1.1 parser: auto picks httptools when installed, else h11.",
       _PROTO, choices=("auto", "httptools", "h11")),
    _s("http2", bool, None, "Serve HTTP/2 as well as HTTP/1.1: TLS ALPN h2 and cleartext "
       "prior knowledge.", _PROTO, default_text="on when h2 is installed"),
    _s("h2_max_concurrent_streams", int, 100, "HTTP/2: most streams (requests, WebSockets) one "
       "client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS); more are refused with "
       "REFUSED_STREAM.", _PROTO, minimum=1, maximum=2**31 - 1),
    _s("ws", str, "auto", "WebSocket implementation: auto picks websockets when installed, "
       "else wsproto; none serves upgrade requests as plain HTTP (websockets-sansio is accepted "
       "as another name for websockets).", _PROTO,
       choices=("auto", "websockets", "wsproto", "none"),
       aliases=(("websockets-sansio", "websockets"),)),
    _s("ws_max_size", int, 16 * 1024 * 1024, "Largest WebSocket message accepted, in bytes "
       "(after decompression); a larger one closes the connection with 1009.", _PROTO,
       minimum=1),
    _s("ws_max_queue", int, 32, "How many received WebSocket messages may wait for the app "
       "before the server stops reading from that client.", _PROTO, minimum=1),
    _s("ws_ping_interval", float, 20.0, "Seconds between WebSocket keep-alive pings "
       "(0 disables them).", _PROTO, nullable=True, minimum=0),
    _s("ws_ping_timeout", float, 20.0, "Seconds to wait for the pong before closing with 1011 "
       "(0 waits forever).", _PROTO, nullable=True, minimum=0),
    _s("ws_per_message_deflate", bool, True, "Accept permessage-deflate compression on "
       "WebSockets (RFC 7692).", _PROTO, bool_style="value", metavar="BOOLEAN"),
    _s("h11_max_incomplete_event_size", int, None, "With --http h11: most bytes buffered "
       "while a request head is incomplete.", _PROTO, minimum=1,
       default_text="unset (h11's own limit)"),
    # HTTP
    _s("proxy_headers", bool, True, "Take the client address and scheme from X-Forwarded-For/"
       "-Proto (and Forwarded) when the peer is trusted (--forwarded-allow-ips).", _HTTP),
    _s("forwarded_allow_ips", str, None, "Comma-separated IPs, networks or UNIX socket paths "
       "trusted to send proxy headers; * trusts every peer.", _HTTP, metavar="ADDRESSES",
       default_text="$FORWARDED_ALLOW_IPS, else 127.0.0.1,::1"),
    _s("server_header", bool, True, "Add a Server header to responses that lack one.", _HTTP),
    _s("date_header", bool, True, "Add a Date header to responses that lack one.", _HTTP),
    _s("headers", str, (), "Extra response header, NAME:VALUE; repeat for more. In "
       "SLEIPNIR_HEADERS, put one header per line.", _HTTP, flags=("--header",), multiple=True,
       metavar="NAME:VALUE", env_separator="\n"),
    # Limits
    _s("limit_concurrency", int, None, "Answer 503 once this many connections or tasks are "
       "open at the same time.", _LIMITS, minimum=1),
    _s("limit_max_requests", int, None, "Shut down gracefully after serving this many "
       "requests (a supervisor can then restart the process).", _LIMITS, minimum=1),
    _s("limit_max_requests_jitter", int, 0, "Add a random 0..N to --limit-max-requests so "
       "that processes do not all restart together.", _LIMITS, minimum=0),
    _s("limit_request_line", int, 8190, "Longest request line (method, target, version) in "
       "bytes; longer gets 414.", _LIMITS, minimum=1),
    _s("limit_request_header_size", int, 65536, "Largest request header block in bytes; "
       "larger gets 431.", _LIMITS, minimum=1),
    _s("limit_request_headers", int, 100, "Most header fields in one request; more gets 431.",
       _LIMITS, minimum=1),
    _s("limit_request_body", int, None, "Largest request body in bytes; larger gets 413.",
       _LIMITS, minimum=0, default_text="unset (no limit)"),
    # Timeouts
    _s("timeout_keep_alive", float, 5.0, "Close an idle keep-alive connection after this many "
       "seconds. Also how long an HTTP/2 response may wait on a zero flow-control window "
       "without progress before its stream is reset with CANCEL.", _TIMEOUTS, minimum=0),
    _s("timeout_request_header", float, 10.0, "Close a connection whose request head is not "
       "complete within this many seconds (408 when a response is possible).", _TIMEOUTS,
       minimum=0),
    _s("timeout_graceful_shutdown", float, 20.0, "On shutdown, wait at most this many seconds for "
       "open requests before cancelling them; none waits for ever.", _TIMEOUTS, nullable=True,
       minimum=0),
    _s("timeout_lifespan", float, 60.0, "Give up when lifespan startup, or shutdown, takes "
       "longer than this many seconds.", _TIMEOUTS, minimum=0),
    _s("shutdown_delay", float, 0.0, "After SIGTERM, keep serving this many seconds (requests "
       "carry the sleipnir.draining scope extension, for a readiness check to fail) before "
       "the graceful shutdown starts: for load balancers still routing here.", _TIMEOUTS,
       minimum=0),
    _s("timeout_notify", int, 30, "Call callback_notify at least this often (seconds).",
       _TIMEOUTS, flags=(), minimum=1),
    _s("callback_notify", object, None, "Async callable () -> None called every "
       "timeout_notify seconds while serving (a supervisor's heartbeat).", _TIMEOUTS, flags=()),
    _s("timeout_worker_healthcheck", int, 5, "With several workers: seconds a worker has to "
       "answer the supervisor's health check.", _TIMEOUTS, minimum=1),
    # Logging
    _s("log_config", str, LOGGING_CONFIG, "Logging configuration file (.json, .yaml/.yml or "
       ".ini). From Python, a dictConfig dict is accepted too, and None leaves logging alone.",
       _LOGGING, metavar="PATH", must_exist=True,
       default_text="the built-in sleipnir.logging.LOGGING_CONFIG"),
    _s("log_level", str, None, "Level of the sleipnir loggers. From Python, an int "
       "level is accepted too.", _LOGGING, choices=tuple(LOG_LEVELS),
       default_text="unset (info, unless --log-config sets levels)"),
    _s("access_log", bool, True, "Log one line per response.", _LOGGING),
    _s("access_log_format", str, DEFAULT_ACCESS_LOG_FORMAT, "Access log line, with {field} "
       "names from: " + ", ".join(sorted(ACCESS_LOG_FIELDS)) + ".", _LOGGING, metavar="FORMAT"),
    _s("use_colors", bool, None, "Colour the log output.", _LOGGING,
       default_text="unset (colour when writing to a terminal)"),
    # TLS
    _s("ssl_keyfile", str, None, "Private key file (PEM); enables TLS with --ssl-certfile.",
       _TLS, metavar="PATH"),
    _s("ssl_certfile", str, None, "Certificate chain file (PEM); enables TLS.", _TLS,
       metavar="PATH"),
    _s("ssl_keyfile_password", str, None, "Password that decrypts --ssl-keyfile.", _TLS),
    _s("ssl_version", int, int(ssl.PROTOCOL_TLS_SERVER), "Protocol constant passed to "
       "ssl.SSLContext.", _TLS, default_text="17 (ssl.PROTOCOL_TLS_SERVER)"),
    _s("ssl_cert_reqs", int, int(ssl.CERT_NONE), "Client certificate policy as an ssl.VerifyMode "
       "number: 0 none, 1 optional, 2 required.", _TLS, minimum=0, maximum=2),
    _s("ssl_ca_certs", str, None, "CA bundle used to verify client certificates.", _TLS,
       metavar="PATH"),
    _s("ssl_ciphers", str, None, "OpenSSL cipher string.", _TLS,
       default_text="unset (OpenSSL's defaults)"),
    _s("ssl_context_factory", object, None, "Callable (config, default_factory) -> "
       "ssl.SSLContext that builds the TLS context; it may call default_factory().", _TLS,
       flags=()),
    # Processes and reload
    _s("workers", int, None, "Number of worker processes.", _PROC, minimum=0,
       default_text="$WEB_CONCURRENCY, else 1"),
    _s("reload", bool, False, "Restart the server when source files change.", _PROC,
       bool_style="switch"),
    _s("reload_dirs", str, (), "Directory to watch for --reload; repeat for more.", _PROC,
       default_text="none (the current directory)", flags=("--reload-dir",), multiple=True,
       metavar="DIR", must_exist=True),
    _s("reload_includes", str, (), "Glob of files to watch for --reload; repeat for more.",
       _PROC, flags=("--reload-include",), multiple=True, metavar="GLOB"),
    _s("reload_excludes", str, (), "Glob of files --reload ignores; repeat for more.", _PROC,
       flags=("--reload-exclude",), multiple=True, metavar="GLOB"),
    _s("reload_delay", float, 0.25, "Seconds without a new change before a batch of "
       "changes restarts the workers; without watchfiles, also the time between two checks.", _PROC,
       minimum=0),
)
# fmt: on

_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def parse_text(setting: Setting, text: str) -> Any:
    """Parse one command-line or environment value; raise ValueError with a short reason."""
    if setting.nullable and setting.type in (int, float) and text.lower() == "none":
        return None
    if setting.type is bool:
        word = text.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise ValueError(f"{text!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")
    if setting.type in (int, float):
        try:
            return setting.type(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a valid {setting.type.__name__}") from None
    return text


def _check_scalar(setting: Setting, value: Any) -> Any:
    kind = setting.type
    if isinstance(value, str) and kind is not str:
        value = parse_text(setting, value)
        if value is None:
            return None
    if isinstance(value, os.PathLike) and kind is str:
        value = os.fspath(value)
    if setting.must_exist and isinstance(value, str) and not os.path.exists(value):
        raise ValueError(f"{setting.name}: path {value!r} does not exist")
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        got = type(value).__name__
        raise TypeError(f"{setting.name} must be {kind.__name__}, not {got}")
    if setting.choices:
        value = dict(setting.aliases).get(value, value)
        if value not in setting.choices:
            raise ValueError(f"{setting.name} must be one of {', '.join(setting.choices)}")
    _check_range(setting, value)
    return value


def _check_range(setting: Setting, value: Any) -> None:
    low, high = setting.minimum, setting.maximum
    if low is not None and value < low:
        raise ValueError(f"{setting.name} must be at least {low:g}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{setting.name} must be at most {high:g}, got {value}")


def check_value(setting: Setting, value: Any) -> Any:
    """Validate and coerce a value for `setting`; TypeError or ValueError if it is unusable."""
    special = _SPECIAL.get(setting.name)
    if special is not None:
        return special(setting, value)
    if value is None:
        if setting.nullable:
            return None
        raise TypeError(f"{setting.name} must not be None")
    if setting.multiple:
        items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        return [_check_scalar(setting, item) for item in items]
    return _check_scalar(setting, value)


# RFC 9110 §5.1 token and §5.5 field-value (sent as latin-1, so nothing above U+00FF).
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_RE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def _check_headers(setting: Setting, value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    headers = []
    for item in items:
        if isinstance(item, str):
            name, sep, text = item.partition(":")
            if not sep:
                raise ValueError(f"header {item!r} must look like NAME:VALUE")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            name, text = item
        else:
            raise TypeError(f"headers items must be 'NAME:VALUE' or (name, value), not {item!r}")
        name, text = str(name).strip(), str(text).strip()
        if not _HEADER_NAME_RE.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}: it must be an RFC 9110 token")
        if not _HEADER_VALUE_RE.fullmatch(text):
            raise ValueError(
                f"invalid value for header {name!r}: only visible latin-1 characters, "
                "spaces and tabs are allowed"
            )
        headers.append((name, text))
    return headers


def _check_log_level(setting: Setting, value: Any) -> str | int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str) and value.lower() in LOG_LEVELS:
        return value.lower()
    raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)} or an int")


def _check_log_config(setting: Setting, value: Any) -> str | dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return copy.deepcopy(value)  # the caller's dict (or LOGGING_CONFIG) stays untouched
    if isinstance(value, (str, os.PathLike)):
        return str(_check_scalar(setting, value))
    raise TypeError("log_config must be a file path or a logging.config.dictConfig dict")


def _check_access_log_format(setting: Setting, value: Any) -> str:
    text = _check_scalar(setting, value)
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"access_log_format: {exc}") from None
    for _, name, _, _ in parts:
        if name is not None and name not in ACCESS_LOG_FIELDS:
            known = ", ".join(sorted(ACCESS_LOG_FIELDS))
            raise ValueError(f"access_log_format: unknown field {{{name}}} (known: {known})")
    return str(text)


def _check_addresses(setting: Setting, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    raise TypeError("forwarded_allow_ips must be a comma-separated str or a list of str")


def _check_binds(setting: Setting, value: Any) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"bind items must be str, not {type(item).__name__}")
        parse_bind(item, backlog=1)  # ValueError naming the address and what is wrong
    return items


def _check_callable(setting: Setting, value: Any) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{setting.name} must be callable or None")
    return value


_SPECIAL: dict[str, Callable[[Setting, Any], Any]] = {
    "headers": _check_headers,
    "log_level": _check_log_level,
    "log_config": _check_log_config,
    "access_log_format": _check_access_log_format,
    "ssl_context_factory": _check_callable,
    "callback_notify": _check_callable,
    "forwarded_allow_ips": _check_addresses,
    "bind": _check_binds,
}


_DEFAULTS: dict[str, Any] = {s.name: check_value(s, s.default) for s in SETTINGS}
_DEFAULTS.update(workers=1, forwarded_allow_ips="127.0.0.1,::1")  # without the env variables


class Config:
    """All settings of one server, as plain attributes named like uvicorn's `Config`."""

    app: Any  # the ASGI/WSGI application, or a "module:attribute" import string
    # One annotation per entry of SETTINGS (tests/test_config.py keeps the two in step).
    host: str
    port: int
    uds: str | None
    fd: int | None
    bind: list[str]
    reuse_port: bool
    backlog: int
    app_dir: str
    factory: bool
    interface: str
    lifespan: str
    root_path: str
    env_file: str | None
    reset_contextvars: bool
    loop: str
    http: str
    http2: bool | None
    h2_max_concurrent_streams: int
    ws: str
    ws_max_size: int
    ws_max_queue: int
    ws_ping_interval: float | None
    ws_ping_timeout: float | None
    ws_per_message_deflate: bool
    h11_max_incomplete_event_size: int | None
    proxy_headers: bool
    forwarded_allow_ips: str
    server_header: bool
    date_header: bool
    headers: list[tuple[str, str]]
    limit_concurrency: int | None
    limit_max_requests: int | None
    limit_max_requests_jitter: int
    limit_request_line: int
    limit_request_header_size: int
    limit_request_headers: int
    limit_request_body: int | None
    timeout_keep_alive: float
    timeout_request_header: float
    timeout_graceful_shutdown: float | None
    timeout_lifespan: float
    shutdown_delay: float
    timeout_notify: int
    callback_notify: Callable[[], Awaitable[None]] | None
    timeout_worker_healthcheck: int
    log_config: str | dict[str, Any] | None
    log_level: str | int | None
    access_log: bool
    access_log_format: str
    use_colors: bool | None
    ssl_keyfile: str | None
    ssl_certfile: str | None
    ssl_keyfile_password: str | None
    ssl_version: int
    ssl_cert_reqs: int
    ssl_ca_certs: str | None
    ssl_ciphers: str | None
    ssl_context_factory: Callable[..., ssl.SSLContext] | None
    workers: int
    reload: bool
    reload_dirs: list[str]
    reload_includes: list[str]
    reload_excludes: list[str]
    reload_delay: float

    def __init__(self, app: Any, **settings: Any) -> None:
        for name in settings:
            if name not in _BY_NAME:
                raise TypeError(f"Config() got an unexpected keyword argument {name!r}")
        if not (isinstance(app, str) or callable(app)):
            raise TypeError("app must be an application callable or a 'module:attr' string")
        self.app = app
        values = {s.name: check_value(s, settings.get(s.name, s.default)) for s in SETTINGS}
        self.__dict__.update(values)
        load_env_file(self)  # as uvicorn does: before the env-derived defaults below
        self.workers = _resolve_workers(values["workers"])
        if values["forwarded_allow_ips"] is None:
            fallback = _DEFAULTS["forwarded_allow_ips"]
            self.forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", fallback)

    def settings(self) -> dict[str, Any]:
        """The value of every declared setting, by name."""
        return {s.name: getattr(self, s.name) for s in SETTINGS}

    @property
    def is_ssl(self) -> bool:
        """True when the server should speak TLS."""
        return bool(self.ssl_keyfile or self.ssl_certfile or self.ssl_context_factory)

    def __repr__(self) -> str:
        changed = [
            f"{name}={value!r}"
            for name, value in self.settings().items()
            if value != _DEFAULTS[name] and name != "ssl_keyfile_password"
        ]
        return f"Config({', '.join([repr(self.app), *changed])})"


def _resolve_workers(value: int | None) -> int:
    if value is None and "WEB_CONCURRENCY" in os.environ:
        text = os.environ["WEB_CONCURRENCY"]
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"WEB_CONCURRENCY={text!r} is not an integer") from None
    return value or 1


def load_env_file(config: Config) -> None:
    """Load `config.env_file` (if set) into os.environ with python-dotenv; set values win."""
    if config.env_file is None:
        return
    if not os.path.isfile(config.env_file):
        raise FileNotFoundError(f"env_file {config.env_file!r} does not exist")
    try:
        from dotenv import load_dotenv
    except ImportError:
        raise ImportError(
            "env_file needs python-dotenv: pip install python-dotenv (or 'sleipnir[standard]')"
        ) from None
    load_dotenv(dotenv_path=config.env_file)
