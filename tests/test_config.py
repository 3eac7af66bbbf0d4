"""sleipnir.config: the SETTINGS declarations, Config validation, env file, generated docs."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sleipnir import _docgen
from sleipnir.config import SETTINGS, Config, Setting, check_value, load_env_file
from sleipnir.logging import LOGGING_CONFIG

ROOT = Path(__file__).resolve().parent.parent
BY_NAME = {s.name: s for s in SETTINGS}

# Every setting and its default, pinned here so that a change is a deliberate one.
EXPECTED_DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 8000,
    "uds": None,
    "fd": None,
    "bind": [],
    "reuse_port": False,
    "backlog": 2048,
    "app_dir": "",
    "factory": False,
    "interface": "auto",
    "lifespan": "auto",
    "root_path": "",
    "env_file": None,
    "reset_contextvars": False,
    "loop": "auto",
    "http": "auto",
    "http2": None,
    "h2_max_concurrent_streams": 100,
    "ws": "auto",
    "ws_max_size": 16777216,
    "ws_max_queue": 32,
    "ws_ping_interval": 20.0,
    "ws_ping_timeout": 20.0,
    "ws_per_message_deflate": True,
    "h11_max_incomplete_event_size": None,
    "proxy_headers": True,
    "forwarded_allow_ips": "127.0.0.1,::1",
    "server_header": True,
    "date_header": True,
    "headers": [],
    "limit_concurrency": None,
    "limit_max_requests": None,
    "limit_max_requests_jitter": 0,
    "limit_request_line": 8190,
    "limit_request_header_size": 65536,
    "limit_request_headers": 100,
    "limit_request_body": None,
    "timeout_keep_alive": 5.0,
    "timeout_request_header": 10.0,
    "timeout_graceful_shutdown": 20.0,
    "timeout_lifespan": 60.0,
    "shutdown_delay": 0.0,
    "timeout_notify": 30,
    "callback_notify": None,
    "timeout_worker_healthcheck": 5,
    "log_config": LOGGING_CONFIG,
    "log_level": None,
    "access_log": True,
    "access_log_format": '{client} - "{request_line}" {status} {status_phrase}',
    "use_colors": None,
    "ssl_keyfile": None,
    "ssl_certfile": None,
    "ssl_keyfile_password": None,
    "ssl_version": 17,
    "ssl_cert_reqs": 0,
    "ssl_ca_certs": None,
    "ssl_ciphers": None,
    "ssl_context_factory": None,
    "workers": 1,
    "reload": False,
    "reload_dirs": [],
    "reload_includes": [],
    "reload_excludes": [],
    "reload_delay": 0.25,
}


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"):
        monkeypatch.setenv(name, "")  # so that monkeypatch restores it, even if a test sets it
        monkeypatch.delenv(name)


def make_ssl_context(config: Any, default: Any) -> Any:
    return default()  # pragma: no cover - only pickled, never called


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    pass


# --------------------------------------------------------------------------- declarations


def test_defaults_are_pinned() -> None:
    assert Config("main:app").settings() == EXPECTED_DEFAULTS


def test_names_flags_and_env_vars_are_unique() -> None:
    names = [s.name for s in SETTINGS]
    flags = [flag for s in SETTINGS for flag in s.flags]
    assert len(set(names)) == len(names)
    assert len(set(flags)) == len(flags)
    for setting in SETTINGS:
        assert setting.help and setting.group
        if setting.flags:
            assert setting.env == "SLEIPNIR_" + setting.name.upper()
            assert all(flag.startswith("--") for flag in setting.flags)
        else:
            assert setting.env is None


def test_config_annotations_match_settings() -> None:
    """Config's attribute annotations (for type checkers) list exactly the declared names."""
    annotated = [name for name in Config.__annotations__ if name != "app"]
    assert annotated == [s.name for s in SETTINGS]


# --------------------------------------------------------------------------- Config


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'prot'"):
        Config("main:app", prot=80)


def test_app_must_be_callable_or_string() -> None:
    assert Config(asgi_app).app is asgi_app
    with pytest.raises(TypeError, match="app must be"):
        Config(42)


@pytest.mark.parametrize(
    ("name", "given", "stored"),
    [
        ("port", "9000", 9000),
        ("port", 0, 0),
        ("ws_ping_interval", 5, 5.0),
        ("ws_ping_interval", None, None),
        ("timeout_graceful_shutdown", None, None),
        ("timeout_graceful_shutdown", "none", None),
        ("timeout_keep_alive", 1, 1.0),
        ("access_log", "off", False),
        ("reload", "yes", True),
        ("ws", "websockets-sansio", "websockets"),
        ("loop", "none", "asyncio"),
        ("uds", Path("/tmp/x.sock"), "/tmp/x.sock"),
        ("reload_includes", "*.py", ["*.py"]),
        ("reload_excludes", ("a", "b"), ["a", "b"]),
        ("log_level", "DEBUG", "debug"),
        ("log_level", 15, 15),
        ("log_config", None, None),
        ("log_config", {"version": 1}, {"version": 1}),
        ("forwarded_allow_ips", ["10.0.0.1", "10.0.0.2"], "10.0.0.1,10.0.0.2"),
        ("forwarded_allow_ips", "*", "*"),
        (
            "access_log_format",
            "{method} {path} {duration_ms:.1f}",
            "{method} {path} {duration_ms:.1f}",
        ),
        ("ssl_context_factory", make_ssl_context, make_ssl_context),
    ],
)
def test_values_are_coerced(name: str, given: Any, stored: Any) -> None:
    assert getattr(Config("main:app", **{name: given}), name) == stored


@pytest.mark.parametrize(
    ("name", "given", "error", "match"),
    [
        ("port", "http", ValueError, "not a valid int"),
        ("port", 70000, ValueError, "at most 65535"),
        ("port", -1, ValueError, "at least 0"),
        ("port", True, TypeError, "port must be int"),
        ("port", None, TypeError, "port must not be None"),
        ("port", 80.5, TypeError, "port must be int, not float"),
        ("host", 1, TypeError, "host must be str"),
        ("http", "zttp", ValueError, "http must be one of auto, httptools, h11"),
        ("loop", "zuvloop", ValueError, "loop must be one of"),
        ("access_log", "maybe", ValueError, "not a boolean"),
        ("log_level", "loud", ValueError, "log_level must be one of"),
        ("log_level", 1.5, ValueError, "log_level must be one of"),
        ("log_config", 3, TypeError, "log_config must be"),
        ("log_config", "/nonexistent/log.json", ValueError, "does not exist"),
        ("env_file", "/nonexistent/.env", ValueError, "does not exist"),
        ("reload_dirs", ["/nonexistent/dir"], ValueError, "does not exist"),
        ("access_log_format", "{nope}", ValueError, r"unknown field \{nope\}"),
        ("access_log_format", "{status", ValueError, "access_log_format"),
        ("forwarded_allow_ips", 3, TypeError, "forwarded_allow_ips"),
        ("ssl_context_factory", "not callable", TypeError, "must be callable"),
        ("limit_request_line", 0, ValueError, "at least 1"),
    ],
)
def test_invalid_values_are_rejected(
    name: str, given: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Config("main:app", **{name: given})


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (None, []),
        ("X-A: 1", [("X-A", "1")]),
        (["X-A:1", ("X-B", " two, three ")], [("X-A", "1"), ("X-B", "two, three")]),
        ([["X-C", "v:w"]], [("X-C", "v:w")]),
        ("X-Time: 12:30", [("X-Time", "12:30")]),
    ],
)
def test_headers_accept_strings_and_pairs(given: Any, stored: list[tuple[str, str]]) -> None:
    assert Config("main:app", headers=given).headers == stored


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ("no-colon", "NAME:VALUE"),
        (": empty", "invalid header name"),
        ("Bad Name: x", "invalid header name"),
        (["X-A: line\r\nbreak"], "invalid value"),
        (["X-A: caf\u20ac"], "latin-1"),
        ([("a", "b", "c")], "headers items"),
    ],
)
def test_bad_headers_are_rejected(given: Any, match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        Config("main:app", headers=given)


def test_log_config_dict_is_copied() -> None:
    mine: dict[str, Any] = {"version": 1, "loggers": {}}
    config = Config("main:app", log_config=mine)
    assert config.log_config == mine and config.log_config is not mine
    assert Config("main:app").log_config is not LOGGING_CONFIG


def test_workers_default_comes_from_web_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert Config("main:app").workers == 3
    assert Config("main:app", workers=2).workers == 2
    assert Config("main:app", workers=0).workers == 1  # as uvicorn: 0 means the default
    monkeypatch.setenv("WEB_CONCURRENCY", "many")
    with pytest.raises(ValueError, match="WEB_CONCURRENCY"):
        Config("main:app")


def test_forwarded_allow_ips_default_comes_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.1.0.0/16")
    assert Config("main:app").forwarded_allow_ips == "10.1.0.0/16"
    assert Config("main:app", forwarded_allow_ips="*").forwarded_allow_ips == "*"


def test_check_value_of_a_scalar_setting_with_a_list() -> None:
    with pytest.raises(TypeError, match="host must be str, not list"):
        check_value(BY_NAME["host"], ["a"])


# --------------------------------------------------------------------------- pickling, repr


@pytest.mark.parametrize("app", ["main:app", asgi_app])
def test_config_pickles(app: Any) -> None:
    config = Config(
        app,
        port=9001,
        headers=["X-A: 1"],
        log_config={"version": 1},
        ssl_context_factory=make_ssl_context,
        reload_dirs=["."],
    )
    copy = pickle.loads(pickle.dumps(config))
    assert copy.app == config.app
    assert copy.settings() == config.settings()


def test_repr_shows_changes_and_hides_the_password() -> None:
    text = repr(Config("main:app", port=9001, ssl_keyfile_password="hunter2"))
    assert text.startswith("Config('main:app', ")
    assert "port=9001" in text and "hunter2" not in text and "host=" not in text


def test_is_ssl() -> None:
    assert not Config("main:app").is_ssl
    assert Config("main:app", ssl_certfile="cert.pem").is_ssl
    assert Config("main:app", ssl_context_factory=make_ssl_context).is_ssl


# --------------------------------------------------------------------------- env file


def test_env_file_is_loaded_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("SLEIPNIR_TEST_A=file\nSLEIPNIR_TEST_B=file\nWEB_CONCURRENCY=2\n")
    monkeypatch.setenv("SLEIPNIR_TEST_A", "kept")  # values already set win over the file
    monkeypatch.setenv("SLEIPNIR_TEST_B", "")
    monkeypatch.delenv("SLEIPNIR_TEST_B")  # (set, then removed: monkeypatch cleans up after)
    config = Config("main:app", env_file=env_file)
    assert config.env_file == str(env_file)
    assert (os.environ["SLEIPNIR_TEST_A"], os.environ["SLEIPNIR_TEST_B"]) == ("kept", "file")
    assert config.workers == 2  # WEB_CONCURRENCY is read after the file, as uvicorn does
    monkeypatch.delenv("SLEIPNIR_TEST_B")
    load_env_file(config)  # can be called again, e.g. by the server
    assert os.environ["SLEIPNIR_TEST_B"] == "file"


def test_env_file_needs_python_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("")
    monkeypatch.setitem(sys.modules, "dotenv", None)
    with pytest.raises(ImportError, match="python-dotenv"):
        Config("main:app", env_file=str(env_file))


def test_env_file_removed_before_loading(tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("")
    config = Config("main:app", env_file=str(env_file))
    env_file.unlink()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_env_file(config)


# --------------------------------------------------------------------------- docs


def test_docs_settings_md_is_up_to_date() -> None:
    expected = _docgen.render()
    actual = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert actual == expected, f"docs/settings.md is stale: run `{_docgen.COMMAND}`"


def test_docgen_command_prints_the_document() -> None:
    command = [sys.executable, "-m", "sleipnir._docgen"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout == _docgen.render()
    assert _docgen.COMMAND.startswith("python -m sleipnir._docgen ")


def test_docs_mention_every_setting() -> None:
    text = _docgen.render()
    for setting in SETTINGS:
        assert f"| `{setting.name}` |" in text
        for flag in setting.flags:
            assert f"`{flag}" in text
    assert "`--no-access-log`" in text
    assert "Python only" in text  # ssl_context_factory


def test_docgen_main_prints_the_document(capsys: pytest.CaptureFixture[str]) -> None:
    _docgen.main()
    assert capsys.readouterr().out == _docgen.render()


def test_setting_is_frozen() -> None:
    setting: Setting = BY_NAME["port"]
    with pytest.raises(AttributeError):
        setting.default = 1  # type: ignore[misc]
