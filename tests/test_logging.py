"""sleipnir.logging: config sources, levels, colours, access log, trace, rate limiting."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sleipnir.logging import (
    ACCESS_LOG_FIELDS,
    LOGGING_CONFIG,
    TRACE_LOG_LEVEL,
    AccessFormatter,
    AccessLog,
    DefaultFormatter,
    LogConfigError,
    RateLimitedLog,
    access_logger,
    configure_logging,
    error_logger,
    resolve_log_level,
    trace_message,
)

LOGGER_NAMES = ("", "sleipnir", "sleipnir.error", "sleipnir.access")
CLIENT = ("127.0.0.1", 50123)


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts from, and leaves behind, the logging state it found."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    saved = []
    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        saved.append(
            (logger, list(logger.handlers), logger.level, logger.propagate, logger.disabled)
        )
    yield
    for logger, handlers, level, propagate, disabled in saved:
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled


def capture(name: str, fmt: str = "%(message)s", *, colours: bool | None = None) -> ListHandler:
    """Replace the handlers of ``name`` by a list handler with a sleipnir formatter."""
    handler = ListHandler()
    formatter_class = AccessFormatter if name == "sleipnir.access" else DefaultFormatter
    handler.setFormatter(formatter_class(fmt, use_colors=colours))
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.propagate = False
    logger.disabled = False
    logger.setLevel(TRACE_LOG_LEVEL)
    return handler


def log_request(access: AccessLog, **overrides: Any) -> None:
    arguments: dict[str, Any] = {
        "client": CLIENT,
        "method": "GET",
        "raw_path": b"/items/1",
        "query_string": b"q=a%20b",
        "http_version": "1.1",
        "status": 200,
        "bytes_sent": 1234,
        "duration_s": 0.0125,
    }
    arguments.update(overrides)
    access.log(**arguments)


# --------------------------------------------------------------------------- default config


def test_trace_level_is_registered() -> None:
    assert logging.getLevelName(TRACE_LOG_LEVEL) == "TRACE"
    assert resolve_log_level("trace") == TRACE_LOG_LEVEL


def test_default_config_error_and_access_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(use_colors=False)
    error_logger.info("Started server process [%d]", 42)
    error_logger.debug("not shown at INFO")
    log_request(AccessLog())
    out, err = capsys.readouterr()
    assert err == "INFO:     Started server process [42]\n"
    assert out == 'INFO:     127.0.0.1:50123 - "GET /items/1?q=a%20b HTTP/1.1" 200 OK\n'


def test_default_config_is_not_mutated() -> None:
    before = json.dumps(LOGGING_CONFIG, sort_keys=True)
    configure_logging(use_colors=True)
    assert json.dumps(LOGGING_CONFIG, sort_keys=True) == before


def test_level_prefix_padding() -> None:
    handler = capture("sleipnir.error", "%(levelprefix)s|%(message)s", colours=False)
    error_logger.critical("c")
    error_logger.log(TRACE_LOG_LEVEL, "t")
    error_logger.warning("w")
    assert handler.lines == ["CRITICAL:|c", "TRACE:   |t", "WARNING: |w"]


# --------------------------------------------------------------------------- colours


def test_colours_forced_on(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(use_colors=True)
    error_logger.warning("careful")
    log_request(AccessLog(), status=404)
    out, err = capsys.readouterr()
    assert err == "\033[33mWARNING\033[0m:  careful\n"
    assert "\033[1mGET /items/1?q=a%20b HTTP/1.1\033[0m" in out
    assert out.endswith("\033[31m404\033[0m \033[31mNot Found\033[0m\n")


def test_colours_auto_off_for_non_tty(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging()
    error_logger.info("plain")
    assert "\033[" not in capsys.readouterr().err


def tty_config(stream: io.StringIO) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"c": {"()": DefaultFormatter, "fmt": "%(levelprefix)s %(message)s"}},
        "handlers": {"h": {"class": "logging.StreamHandler", "formatter": "c", "stream": stream}},
        "loggers": {"sleipnir": {"handlers": ["h"], "level": "INFO", "propagate": False}},
    }


def test_colours_auto_on_for_tty() -> None:
    stream = FakeTTY()
    configure_logging(log_config=tty_config(stream))
    error_logger.info("coloured")
    assert stream.getvalue() == "\033[32mINFO\033[0m:     coloured\n"


def test_no_color_env_and_explicit_false_win_over_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = FakeTTY()
    monkeypatch.setenv("NO_COLOR", "1")
    configure_logging(log_config=tty_config(stream))
    error_logger.info("a")
    monkeypatch.delenv("NO_COLOR")
    configure_logging(log_config=tty_config(stream), use_colors=False)
    error_logger.info("b")
    assert stream.getvalue() == "INFO:     a\nINFO:     b\n"


def test_color_message_extra_used_only_with_colours() -> None:
    handler = capture("sleipnir.error", colours=True)
    error_logger.info("plain %s", "x", extra={"color_message": "bold %s"})
    handler.setFormatter(DefaultFormatter("%(message)s", use_colors=False))
    error_logger.info("plain %s", "x", extra={"color_message": "bold %s"})
    assert handler.lines == ["bold x", "plain x"]


# --------------------------------------------------------------------------- levels


@pytest.mark.parametrize(
    ("given", "expected"),
    [("debug", 10), ("TRACE", 5), ("Warning", 30), (" info ", 20), (42, 42)],
)
def test_log_level_applies_to_all_sleipnir_loggers(given: str | int, expected: int) -> None:
    configure_logging(log_level=given)
    for name in ("sleipnir", "sleipnir.error", "sleipnir.access"):
        assert logging.getLogger(name).level == expected


def test_unknown_log_level_names_valid_ones() -> None:
    with pytest.raises(LogConfigError, match=r"unknown log level 'loud'.*trace"):
        configure_logging(log_level="loud")


def test_trace_level_enables_trace_messages() -> None:
    handler = ListHandler()
    configure_logging(log_config=None, log_level="trace")
    logging.getLogger("sleipnir").handlers = [handler]  # sleipnir.error propagates to it
    trace_message(error_logger, "ASGI [1] send", {"type": "http.response.body", "body": b"x"})
    assert handler.lines == ["ASGI [1] send {'type': 'http.response.body', 'body': '<1 bytes>'}"]


def test_log_config_none_keeps_handlers_but_applies_level() -> None:
    handler = ListHandler()
    logging.getLogger("sleipnir").handlers = [handler]
    configure_logging(log_config=None, log_level="warning")
    assert logging.getLogger("sleipnir").handlers == [handler]
    assert logging.getLogger("sleipnir").level == logging.WARNING


# --------------------------------------------------------------------------- config files


def file_config(log_file: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(name)s|%(levelname)s|%(message)s"},
            "fields": {"format": "%(client)s %(status)s %(duration_ms).1f %(bytes)s"},
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "filename": str(log_file),
                "formatter": "plain",
            },
            "access": {
                "class": "logging.FileHandler",
                "filename": str(log_file),
                "formatter": "fields",
            },
        },
        "loggers": {
            "sleipnir": {"handlers": ["file"], "level": "INFO", "propagate": False},
            "sleipnir.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def emit_and_read(log_file: Path) -> list[str]:
    error_logger.info("hello")
    log_request(AccessLog())
    for name in ("sleipnir", "sleipnir.access"):
        for handler in logging.getLogger(name).handlers:
            handler.flush()
    return log_file.read_text().splitlines()


EXPECTED_FILE_LINES = ["sleipnir.error|INFO|hello", "127.0.0.1:50123 200 12.5 1234"]


def test_dict_config_is_not_mutated(tmp_path: Path) -> None:
    config = file_config(tmp_path / "out.log")
    before = json.dumps(config, sort_keys=True)
    configure_logging(log_config=config)
    assert json.dumps(config, sort_keys=True) == before
    assert emit_and_read(tmp_path / "out.log") == EXPECTED_FILE_LINES


def test_json_config_file(tmp_path: Path) -> None:
    path = tmp_path / "log.json"
    path.write_text(json.dumps(file_config(tmp_path / "out.log")))
    configure_logging(log_config=str(path))
    assert emit_and_read(tmp_path / "out.log") == EXPECTED_FILE_LINES


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_config_file(tmp_path: Path, suffix: str) -> None:
    import yaml

    path = tmp_path / f"log{suffix}"
    path.write_text(yaml.safe_dump(file_config(tmp_path / "out.log")))
    configure_logging(log_config=path)
    assert emit_and_read(tmp_path / "out.log") == EXPECTED_FILE_LINES


def test_ini_config_file_keeps_existing_loggers(tmp_path: Path) -> None:
    bystander = logging.getLogger("tests.bystander")
    log_file = tmp_path / "out.log"
    path = tmp_path / "log.ini"
    path.write_text(
        textwrap.dedent(
            f"""\
            [loggers]
            keys=root,sleipnir,access

            [handlers]
            keys=file,access

            [formatters]
            keys=plain,fields

            [logger_root]
            level=WARNING
            handlers=

            [logger_sleipnir]
            level=INFO
            handlers=file
            propagate=0
            qualname=sleipnir

            [logger_access]
            level=INFO
            handlers=access
            propagate=0
            qualname=sleipnir.access

            [handler_file]
            class=FileHandler
            formatter=plain
            args=({str(log_file)!r},)

            [handler_access]
            class=FileHandler
            formatter=fields
            args=({str(log_file)!r},)

            [formatter_plain]
            format=%(name)s|%(levelname)s|%(message)s

            [formatter_fields]
            format=%(client)s %(status)s %(duration_ms).1f %(bytes)s
            """
        )
    )
    configure_logging(log_config=path)
    assert emit_and_read(log_file) == EXPECTED_FILE_LINES
    assert not bystander.disabled


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(LogConfigError, match=r"log config file not found: .*nope.json"):
        configure_logging(log_config=tmp_path / "nope.json")


def test_broken_json_config(tmp_path: Path) -> None:
    path = tmp_path / "log.json"
    path.write_text("{not json")
    with pytest.raises(LogConfigError, match=r"cannot read log config .*log.json"):
        configure_logging(log_config=path)


def test_broken_yaml_config(tmp_path: Path) -> None:
    path = tmp_path / "log.yaml"
    path.write_text("version: [1\n")
    with pytest.raises(LogConfigError, match=r"cannot parse log config .*log.yaml"):
        configure_logging(log_config=path)


def test_non_mapping_config(tmp_path: Path) -> None:
    path = tmp_path / "log.json"
    path.write_text("[1, 2]")
    with pytest.raises(LogConfigError, match=r"expected a mapping"):
        configure_logging(log_config=path)


def test_invalid_dict_config() -> None:
    config = {"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}
    with pytest.raises(LogConfigError, match=r"invalid log config: .*handler 'h'"):
        configure_logging(log_config=config)


def test_invalid_ini_config(tmp_path: Path) -> None:
    path = tmp_path / "log.ini"
    path.write_text("[loggers]\nkeys=root\n")
    with pytest.raises(LogConfigError, match=r"invalid log config .*log.ini"):
        configure_logging(log_config=path)


def test_yaml_without_pyyaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.yaml"
    path.write_text("version: 1\n")
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(LogConfigError, match=r"needs PyYAML: pip install PyYAML"):
        configure_logging(log_config=path)


# --------------------------------------------------------------------------- access log


def test_access_log_all_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = capture("sleipnir.access", colours=False)
    fmt = "|".join(f"{{{name}}}" for name in sorted(ACCESS_LOG_FIELDS - {"duration_ms"}))
    fmt += "|{duration_ms:.1f}"
    log_request(AccessLog(fmt), status=201)
    (line,) = handler.lines
    fields = dict(zip(sorted(ACCESS_LOG_FIELDS - {"duration_ms"}), line.split("|"), strict=False))
    assert fields == {
        "bytes": "1234",
        "client": "127.0.0.1:50123",
        "duration_s": "0.0125",
        "http_version": "1.1",
        "method": "GET",
        "path": "/items/1",
        "pid": str(os.getpid()),
        "query_string": "q=a%20b",
        "request_line": "GET /items/1?q=a%20b HTTP/1.1",
        "status": "201",
        "status_phrase": "Created",
    }
    assert line.endswith("|12.5")


def test_access_log_extras_on_record() -> None:
    handler = capture("sleipnir.access")
    log_request(AccessLog(), client=None, status=599, query_string=b"")
    (record,) = handler.records
    assert (record.client, record.status, record.status_phrase) == ("-", 599, "")  # type: ignore[attr-defined]
    assert record.request_line == "GET /items/1 HTTP/1.1"  # type: ignore[attr-defined]
    assert record.duration_ms == pytest.approx(12.5)  # type: ignore[attr-defined]
    assert record.levelno == logging.INFO and record.name == "sleipnir.access"
    assert handler.lines == ['- - "GET /items/1 HTTP/1.1" 599 ']


def test_access_log_escapes_non_ascii_target() -> None:
    handler = capture("sleipnir.access", "%(request_line)s")
    log_request(AccessLog(), raw_path=b"/caf\xc3\xa9", query_string=b"x=\xff")
    assert handler.lines == ["GET /caf\\xc3\\xa9?x=\\xff HTTP/1.1"]


def test_coloured_access_line_with_int_spec_falls_back_to_plain() -> None:
    handler = capture("sleipnir.access", colours=True)
    log_request(AccessLog("{status:d} {status:03d}"), status=204)
    assert handler.lines == ["204 204"]


def test_disabled_access_log_does_no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_logging(access_log=False)
    assert access_logger.handlers == [] and not access_logger.propagate

    def explode(*args: object, **kwargs: object) -> logging.LogRecord:
        raise AssertionError("a record was built for a disabled access log")

    monkeypatch.setattr(access_logger, "makeRecord", explode)
    log_request(AccessLog())


def test_access_logger_below_info_does_no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    capture("sleipnir.access").setLevel(logging.NOTSET)
    access_logger.setLevel(logging.WARNING)
    monkeypatch.setattr(access_logger, "makeRecord", None)  # would fail if called
    log_request(AccessLog())


@pytest.mark.parametrize(
    ("fmt", "match"),
    [
        ("{client} {user_agent}", r"unknown field \{user_agent\}.*valid fields: bytes, client"),
        ("{}", r"unknown field \{\}"),
        ("{0}", r"unknown field \{0\}"),
        ("{client:d}", "invalid access log format"),
        ("{client", "invalid access log format"),
        ("{status:{width}}", "invalid access log format"),
    ],
)
def test_access_format_validation(fmt: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AccessLog(fmt)


def test_access_format_allows_attributes_and_specs() -> None:
    handler = capture("sleipnir.access")
    log_request(AccessLog("{status.real} {duration_s:.2f} {method!r:>6}"))
    assert handler.lines == ["200 0.01  'GET'"]


# --------------------------------------------------------------------------- trace


def test_trace_message_replaces_payloads_by_size() -> None:
    handler = capture("sleipnir.error")
    message = {"type": "websocket.send", "bytes": memoryview(b"abc"), "text": "héllo"}
    trace_message(error_logger, "WS send", message)
    trace_message(error_logger, "recv", {"type": "http.request", "body": bytearray(13)})
    assert handler.lines == [
        "WS send {'type': 'websocket.send', 'bytes': '<3 bytes>', 'text': '<5 chars>'}",
        "recv {'type': 'http.request', 'body': '<13 bytes>'}",
    ]
    assert message["text"] == "héllo"


def test_trace_message_when_disabled() -> None:
    handler = capture("sleipnir.error")
    error_logger.setLevel(logging.DEBUG)
    trace_message(error_logger, "x", {"type": "http.request", "body": b""})
    assert handler.records == []


# --------------------------------------------------------------------------- rate limiting


def test_rate_limited_log_windows() -> None:
    handler = capture("sleipnir.error")
    clock = FakeClock()
    limited = RateLimitedLog(error_logger, limit=2, window=10.0, clock=clock)
    results = [limited.log("bad-request", "invalid request from %s", n) for n in range(5)]
    assert results == [True, True, False, False, False]
    clock.now += 9.9
    assert limited.log("bad-request", "invalid request from %s", 5) is False
    assert limited.log("other", "other reason") is True  # reasons are independent
    clock.now += 0.1
    assert limited.log("bad-request", "invalid request from %s", 6) is True
    assert handler.lines == [
        "invalid request from 0",
        "invalid request from 1",
        "other reason",
        "bad-request: 4 similar message(s) suppressed in the last 10s",
        "invalid request from 6",
    ]
    assert all(record.levelno == logging.WARNING for record in handler.records)


def test_rate_limited_log_flush_reports_and_resets() -> None:
    handler = capture("sleipnir.error")
    limited = RateLimitedLog(error_logger, limit=1, window=60, clock=FakeClock())
    for _ in range(3):
        limited.log("r", "line")
    limited.flush()
    limited.flush()  # nothing pending any more
    assert limited.log("r", "line") is True
    assert handler.lines == ["line", "r: 2 similar message(s) suppressed in the last 60s", "line"]


def test_rate_limited_log_disabled_logger_keeps_no_state() -> None:
    handler = capture("sleipnir.error")
    error_logger.setLevel(logging.ERROR)
    limited = RateLimitedLog(error_logger, clock=FakeClock())
    assert limited.log("r", "x") is False
    limited.flush()
    assert handler.records == []


@pytest.mark.parametrize(("limit", "window"), [(0, 1.0), (1, 0.0)])
def test_rate_limited_log_rejects_bad_settings(limit: int, window: float) -> None:
    with pytest.raises(ValueError, match=r"limit >= 1 and window > 0"):
        RateLimitedLog(error_logger, limit=limit, window=window)
