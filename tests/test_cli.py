"""sleipnir.cli: argv and SLEIPNIR_* parsing, errors, --version, and the uvicorn option walk."""

from __future__ import annotations

import importlib
import inspect
import json
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import uvicorn

from sleipnir import cli, main
from sleipnir._version import __version__
from sleipnir.config import SETTINGS, Config
from sleipnir.logging import LOGGING_CONFIG

BY_NAME = {s.name: s for s in SETTINGS}
FLAGGED = [s for s in SETTINGS if s.flags]
uvicorn_main: Any = importlib.import_module("uvicorn.main")  # `uvicorn.main` is the function
UVICORN_OPTIONS: list[click.Option] = [
    p for p in uvicorn_main.main.params if isinstance(p, click.Option) and p.name != "version"
]

# name -> (command-line tokens, SLEIPNIR_<NAME> text, value stored in Config); one per flag.
SAMPLES: dict[str, tuple[list[str], str, Any]] = {
    "host": (["--host", "0.0.0.0"], "0.0.0.0", "0.0.0.0"),
    "port": (["--port", "9001"], "9001", 9001),
    "uds": (["--uds", "/tmp/sleipnir.sock"], "/tmp/sleipnir.sock", "/tmp/sleipnir.sock"),
    "fd": (["--fd", "3"], "3", 3),
    "bind": (["--bind", "unix:/tmp/s.sock"], "unix:/tmp/s.sock", ["unix:/tmp/s.sock"]),
    "reuse_port": (["--reuse-port"], "true", True),
    "backlog": (["--backlog", "128"], "128", 128),
    "app_dir": (["--app-dir", "src"], "src", "src"),
    "factory": (["--factory"], "true", True),
    "interface": (["--interface", "asgi2"], "asgi2", "asgi2"),
    "lifespan": (["--lifespan", "off"], "off", "off"),
    "root_path": (["--root-path", "/api"], "/api", "/api"),
    "env_file": (["--env-file", "app.env"], "app.env", "app.env"),
    "reset_contextvars": (["--reset-contextvars"], "1", True),
    "loop": (["--loop", "asyncio"], "asyncio", "asyncio"),
    "http": (["--http", "h11"], "h11", "h11"),
    "http2": (["--http2"], "yes", True),
    "h2_max_concurrent_streams": (["--h2-max-concurrent-streams", "250"], "250", 250),
    "ws": (["--ws", "none"], "none", "none"),
    "ws_max_size": (["--ws-max-size", "1024"], "1024", 1024),
    "ws_max_queue": (["--ws-max-queue", "8"], "8", 8),
    "ws_ping_interval": (["--ws-ping-interval", "2.5"], "2.5", 2.5),
    "ws_ping_timeout": (["--ws-ping-timeout", "none"], "none", None),
    "ws_per_message_deflate": (["--ws-per-message-deflate", "false"], "false", False),
    "h11_max_incomplete_event_size": (["--h11-max-incomplete-event-size", "4096"], "4096", 4096),
    "proxy_headers": (["--no-proxy-headers"], "off", False),
    "forwarded_allow_ips": (["--forwarded-allow-ips", "10.0.0.1,::2"], "10.0.0.1,::2", "10.0.0.1,::2"),  # noqa: E501
    "server_header": (["--no-server-header"], "0", False),
    "date_header": (["--no-date-header"], "no", False),
    "headers": (
        ["--header", "X-A:1", "--header", "X-B: 2, 3"],
        "X-A:1\nX-B: 2, 3",
        [("X-A", "1"), ("X-B", "2, 3")],
    ),
    "limit_concurrency": (["--limit-concurrency", "50"], "50", 50),
    "limit_max_requests": (["--limit-max-requests", "1000"], "1000", 1000),
    "limit_max_requests_jitter": (["--limit-max-requests-jitter", "10"], "10", 10),
    "limit_request_line": (["--limit-request-line", "4096"], "4096", 4096),
    "limit_request_header_size": (["--limit-request-header-size", "16384"], "16384", 16384),
    "limit_request_headers": (["--limit-request-headers", "50"], "50", 50),
    "limit_request_body": (["--limit-request-body", "1048576"], "1048576", 1048576),
    "timeout_keep_alive": (["--timeout-keep-alive", "2.5"], "2.5", 2.5),
    "timeout_request_header": (["--timeout-request-header", "3"], "3", 3.0),
    "timeout_graceful_shutdown": (["--timeout-graceful-shutdown", "7"], "7", 7.0),
    "timeout_lifespan": (["--timeout-lifespan", "15"], "15", 15.0),
    "shutdown_delay": (["--shutdown-delay", "5"], "5", 5.0),
    "timeout_worker_healthcheck": (["--timeout-worker-healthcheck", "9"], "9", 9),
    "log_config": (["--log-config", "log.json"], "log.json", "log.json"),
    "log_level": (["--log-level", "debug"], "debug", "debug"),
    "access_log": (["--no-access-log"], "false", False),
    "access_log_format": (["--access-log-format", "{method} {status}"], "{method} {status}", "{method} {status}"),  # noqa: E501
    "use_colors": (["--use-colors"], "true", True),
    "ssl_keyfile": (["--ssl-keyfile", "key.pem"], "key.pem", "key.pem"),
    "ssl_certfile": (["--ssl-certfile", "cert.pem"], "cert.pem", "cert.pem"),
    "ssl_keyfile_password": (["--ssl-keyfile-password", "pw"], "pw", "pw"),
    "ssl_version": (["--ssl-version", "2"], "2", 2),
    "ssl_cert_reqs": (["--ssl-cert-reqs", "2"], "2", 2),
    "ssl_ca_certs": (["--ssl-ca-certs", "ca.pem"], "ca.pem", "ca.pem"),
    "ssl_ciphers": (["--ssl-ciphers", "ECDHE+AESGCM"], "ECDHE+AESGCM", "ECDHE+AESGCM"),
    "workers": (["--workers", "3"], "3", 3),
    "reload": (["--reload"], "on", True),
    "reload_dirs": (["--reload-dir", "src", "--reload-dir", "."], "src,.", ["src", "."]),
    "reload_includes": (["--reload-include", "*.py", "--reload-include", "*.toml"], "*.py, *.toml", ["*.py", "*.toml"]),  # noqa: E501
    "reload_excludes": (["--reload-exclude", "*.tmp"], "*.tmp", ["*.tmp"]),
    "reload_delay": (["--reload-delay", "0.5"], "0.5", 0.5),
}  # fmt: skip


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A clean directory with the files the samples name, and no env-derived defaults."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app.env").write_text("")
    (tmp_path / "log.json").write_text(json.dumps({"version": 1}))
    (tmp_path / "src").mkdir()
    for name in ("WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    yield tmp_path


def parse(*argv: str, **environ: str) -> Config:
    return cli.build_config(["main:app", *argv], environ)


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str], **environ: str) -> str:
    with pytest.raises(SystemExit) as exc_info:
        cli.build_config(argv, environ)
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: sleipnir [OPTIONS] APP")
    return err


# --------------------------------------------------------------------------- parsing


def test_samples_cover_every_flagged_setting() -> None:
    assert set(SAMPLES) == {s.name for s in FLAGGED}
    for name, (_, _, value) in SAMPLES.items():
        assert value != Config("main:app").settings()[name], name


def test_no_options_gives_the_defaults() -> None:
    config = parse()
    assert config.app == "main:app"
    assert config.settings() == Config("main:app").settings()


@pytest.mark.parametrize("name", SAMPLES)
def test_every_setting_from_argv(name: str) -> None:
    tokens, _, expected = SAMPLES[name]
    assert getattr(parse(*tokens), name) == expected


@pytest.mark.parametrize("name", SAMPLES)
def test_every_setting_from_env(name: str) -> None:
    _, text, expected = SAMPLES[name]
    env = BY_NAME[name].env
    assert env is not None
    assert getattr(parse(**{env: text}), name) == expected


def test_command_line_beats_env_beats_default() -> None:
    assert parse().port == 8000
    assert parse(SLEIPNIR_PORT="9002").port == 9002
    assert parse("--port", "9003", SLEIPNIR_PORT="9002").port == 9003
    config = parse("--header", "X-Cli:1", SLEIPNIR_HEADERS="X-Env:1")
    assert config.headers == [("X-Cli", "1")]  # lists are replaced, not merged
    assert parse("--access-log", SLEIPNIR_ACCESS_LOG="false").access_log is True


def test_empty_env_values_count_as_unset() -> None:
    assert parse(SLEIPNIR_PORT="", SLEIPNIR_HEADERS="").port == 8000


def test_app_from_env_and_argv() -> None:
    assert cli.build_config([], {"SLEIPNIR_APP": "env:app"}).app == "env:app"
    assert cli.build_config(["cli:app"], {"SLEIPNIR_APP": "env:app"}).app == "cli:app"
    assert cli.build_config(["--port", "1", "cli:app"], {}).port == 1  # APP may come first


@pytest.mark.parametrize(
    ("text", "value"),
    [(w, True) for w in ("1", "true", "TRUE", "yes", "on", "y", "t")]
    + [(w, False) for w in ("0", "false", "no", "Off", "n", "f")],
)
def test_bool_words_in_env(text: str, value: bool) -> None:
    assert parse(SLEIPNIR_ACCESS_LOG=text).access_log is value
    assert parse(SLEIPNIR_RELOAD=text).reload is value


def test_bool_pairs() -> None:
    assert parse("--no-access-log").access_log is False
    assert parse("--no-access-log", "--access-log").access_log is True  # last one wins
    assert parse("--no-use-colors").use_colors is False
    assert parse().use_colors is None


def test_aliases_are_accepted() -> None:
    assert parse("--ws", "websockets-sansio").ws == "websockets"
    assert parse("--loop", "none").loop == "asyncio"


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["main:app", "--port", "http"], {}, "argument --port: 'http' is not a valid int"),
        (["main:app", "--port", "99999"], {}, "argument --port: port must be at most 65535"),
        (["main:app", "--http", "zttp"], {}, "argument --http: http must be one of"),
        (
            ["main:app", "--h2-max-concurrent-streams", "0"],
            {},
            "argument --h2-max-concurrent-streams: h2_max_concurrent_streams must be at least 1",
        ),
        (["main:app", "--header", "nocolon"], {}, "argument --header: header 'nocolon'"),
        (["main:app", "--access-log-format", "{x}"], {}, "unknown field {x}"),
        (["main:app", "--ws-per-message-deflate"], {}, "expected one argument"),
        (["main:app", "--ws-per-message-deflate", "sure"], {}, "is not a boolean"),
        (["main:app", "--env-file", "missing.env"], {}, "does not exist"),
        (["main:app", "--bogus"], {}, "unrecognized arguments: --bogus"),
        (["main:app", "--por", "1"], {}, "unrecognized arguments: --por"),  # no abbreviations
        (["main:app", "other:app"], {}, "unrecognized arguments: other:app"),
        ([], {}, "the following arguments are required: APP"),
        (["main:app"], {"SLEIPNIR_PORT": "abc"}, "environment variable SLEIPNIR_PORT: 'abc'"),
        (["main:app"], {"SLEIPNIR_LOOP": "fast"}, "SLEIPNIR_LOOP: loop must be one of"),
        (["main:app"], {"SLEIPNIR_HEADERS": "X-A:1\nbad"}, "SLEIPNIR_HEADERS: header 'bad'"),
    ],
)
def test_bad_values_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str], message: str
) -> None:
    assert message in usage_error(capsys, argv, **environ)


def test_config_errors_are_usage_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "many")
    assert "WEB_CONCURRENCY='many' is not an integer" in usage_error(capsys, ["main:app"])


def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        cli.build_config(["--help"], {})
    assert exc_info.value.code == 0
    out = capsys.readouterr().out
    for setting in FLAGGED:
        assert all(flag in out for flag in setting.flags)
    assert "--no-server-header" in out and "(default: 8000)" in out


# --------------------------------------------------------------------------- main()


def test_main_runs_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Config] = []
    monkeypatch.setattr("sleipnir.main.run_config", seen.append)
    monkeypatch.setattr(sys, "argv", ["sleipnir", "main:app", "--port", "9004"])
    cli.main()
    assert [config.port for config in seen] == [9004]


def test_workers_need_an_import_string(capsys: pytest.CaptureFixture[str]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    with pytest.raises(SystemExit) as exc_info:
        main.run(app, workers=2)
    assert exc_info.value.code == 2
    assert capsys.readouterr().err == (
        "sleipnir: error: --workers and --reload need the application as an import string "
        "('module:app')\n"
    )


def test_main_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        cli.main(["--version", "--port", "1"])
    assert exc_info.value.code == 0
    assert capsys.readouterr().out == cli.version_line() + "\n"


EXPECTED_VERSION = (
    f"sleipnir {__version__} with {platform.python_implementation()} "
    f"{platform.python_version()} on {platform.system()}"
    + (" (compiled with mypyc)" if cli.compiled_build() else "")
    + "\n"
)


@pytest.mark.parametrize(
    "command",
    [[sys.executable, "-m", "sleipnir"], [str(Path(sys.executable).parent / "sleipnir")]],
    ids=["python -m sleipnir", "console script"],
)
def test_version_subprocess(command: list[str]) -> None:
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, EXPECTED_VERSION, "")


def test_subprocess_errors_exit_2() -> None:
    base = [sys.executable, "-m", "sleipnir"]
    done = subprocess.run(base, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "required: APP" in done.stderr
    done = subprocess.run([*base, "main:app", "--bind", "nowhere"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "--bind" in done.stderr


# --------------------------------------------------------------------------- the uvicorn walk
# Acceptance test: every uvicorn 0.54 option works the same under sleipnir, except for this
# short list of deliberate differences.

# Settings sleipnir has and uvicorn does not.
SLEIPNIR_ONLY = {
    "h2_max_concurrent_streams",
    "timeout_request_header",
    "timeout_lifespan",
    "limit_request_line",
    "limit_request_header_size",
    "limit_request_headers",
    "limit_request_body",
    "access_log_format",
    "bind",  # gunicorn's --bind
    "reuse_port",
    "shutdown_delay",
}
# Declared defaults that differ on purpose.
DEFAULTS_DIFFER = {
    "timeout_graceful_shutdown": (None, 20.0),  # wait for ever -> 20 s, below Kubernetes' 30 s
    "log_config": (None, LOGGING_CONFIG),  # both mean "the built-in dictConfig" (checked below)
    # uvicorn's --http2 needs its zttp parser; ours is on when h2 is installed (issue 4).
    "http2": (False, None),
}
# uvicorn choices that sleipnir does not offer.
UVICORN_ONLY_CHOICES = {
    "loop": {"zuvloop"},  # uvicorn's experimental loop
    "http": {"zttp"},  # uvicorn's HTTP/2-capable parser; sleipnir's HTTP/2 is issue 4
}
# uvicorn.Config does not keep these as given, so compare with what uvicorn's CLI passes run().
COMPARE_CLI_KWARGS = {
    "app_dir",  # handled by uvicorn.run(), not a Config attribute
    "env_file",  # uvicorn.Config loads the file but does not store the path
    "reload_dirs",  # uvicorn.Config resolves these three to paths and default patterns
    "reload_includes",
    "reload_excludes",
}
# uvicorn sample values sleipnir parses but uvicorn does not (sleipnir accepts floats and none).
UVICORN_SAMPLES = {
    "ws_ping_timeout": ["--ws-ping-timeout", "5"],
    "timeout_keep_alive": ["--timeout-keep-alive", "7"],
    "headers": ["--header", "X-A:1"],  # uvicorn keeps the space after the colon in the value
}


def normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [normalise(item) for item in value]
    return value


def uvicorn_config(
    monkeypatch: pytest.MonkeyPatch, tokens: list[str]
) -> tuple[dict[str, Any], Any]:
    """Run uvicorn's own CLI on `tokens`; return the kwargs it passes run() and its Config."""
    captured: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn_main, "run", lambda app, **kw: captured.update(kw, app=app))
    monkeypatch.setattr("logging.config.dictConfig", lambda config: None)
    uvicorn_main.main.main(["main:app", *tokens], standalone_mode=False)
    kwargs = {k: v for k, v in captured.items() if k not in ("app", "app_dir")}
    return captured, uvicorn.Config(captured["app"], **kwargs)


def uvicorn_value(name: str, captured: dict[str, Any], config: Any) -> Any:
    value = captured[name] if name in COMPARE_CLI_KWARGS else getattr(config, name)
    return [] if value is None and BY_NAME[name].multiple else normalise(value)


@pytest.mark.parametrize("option", UVICORN_OPTIONS, ids=lambda p: p.name or "")
def test_uvicorn_flags_and_destinations(option: click.Option) -> None:
    parser = cli.build_parser()
    for flag in option.opts + option.secondary_opts:
        action = parser._option_string_actions[flag]
        assert action.dest == option.name
        assert (action.nargs == 0) == option.is_flag, flag


def test_uvicorn_version_flag() -> None:
    assert any("--version" in p.opts for p in uvicorn_main.main.params)
    assert "--version" in cli.build_parser()._option_string_actions


def test_sleipnir_only_settings_are_the_documented_ones() -> None:
    uvicorn_names = {p.name for p in UVICORN_OPTIONS}
    assert {s.name for s in FLAGGED} - uvicorn_names == SLEIPNIR_ONLY


@pytest.mark.parametrize("option", UVICORN_OPTIONS, ids=lambda p: p.name or "")
def test_uvicorn_declared_defaults(option: click.Option) -> None:
    assert option.name is not None
    theirs = option.default
    if option.multiple:
        theirs = tuple(theirs) if isinstance(theirs, (list, tuple)) else ()
    ours = BY_NAME[option.name].default
    assert (theirs, ours) == DEFAULTS_DIFFER.get(option.name, (theirs, theirs))


def test_uvicorn_effective_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    captured, theirs = uvicorn_config(monkeypatch, [])
    ours = parse()
    for option in UVICORN_OPTIONS:
        assert option.name is not None
        if option.name not in DEFAULTS_DIFFER:
            expected = uvicorn_value(option.name, captured, theirs)
            assert normalise(getattr(ours, option.name)) == expected, option.name
    # Both log configs are a dictConfig of the server's own loggers.
    assert set(theirs.log_config["loggers"]) == {"uvicorn", "uvicorn.error", "uvicorn.access"}
    assert isinstance(ours.log_config, dict)
    assert set(ours.log_config["loggers"]) >= {"sleipnir", "sleipnir.access"}


@pytest.mark.parametrize("option", UVICORN_OPTIONS, ids=lambda p: p.name or "")
def test_uvicorn_values(option: click.Option, monkeypatch: pytest.MonkeyPatch) -> None:
    assert option.name is not None
    tokens = UVICORN_SAMPLES.get(option.name, SAMPLES[option.name][0])
    captured, theirs = uvicorn_config(monkeypatch, tokens)
    ours = parse(*tokens)
    expected = uvicorn_value(option.name, captured, theirs)
    assert normalise(getattr(ours, option.name)) == expected


def uvicorn_choices(option: click.Option) -> set[str]:
    if isinstance(option.type, click.Choice):
        return {str(choice) for choice in option.type.choices}
    if option.metavar and option.metavar.startswith("["):
        return set(option.metavar.strip("[]").split("|"))
    return set()


@pytest.mark.parametrize(
    "option", [p for p in UVICORN_OPTIONS if uvicorn_choices(p)], ids=lambda p: p.name or ""
)
def test_uvicorn_choices(option: click.Option) -> None:
    assert option.name is not None
    setting = BY_NAME[option.name]
    ours = set(setting.choices) | {alias for alias, _ in setting.aliases}
    assert uvicorn_choices(option) - ours == UVICORN_ONLY_CHOICES.get(option.name, set())
    for choice in uvicorn_choices(option) & ours:
        assert parse(setting.flags[0], choice)


def test_uvicorn_python_api_names_are_accepted() -> None:
    names = {s.name for s in SETTINGS}
    run_names = set(inspect.signature(uvicorn.run).parameters) - {"app"}
    assert run_names - names == set()
    config_names = set(inspect.signature(uvicorn.Config).parameters) - {"app"}
    assert config_names - names == set()
