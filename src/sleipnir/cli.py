"""The `sleipnir` command: an argparse parser generated from `config.SETTINGS`.

A value comes from the command line if given there, else from its `SLEIPNIR_<NAME>` environment
variable (non-empty), else from the setting's default. `sleipnir.server` is imported only once a
server is really started, so `sleipnir --version` and `--help` stay quick.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from sleipnir._version import __version__
from sleipnir.config import SETTINGS, Config, Setting, check_value, parse_text

__all__ = ["build_config", "build_parser", "compiled_build", "main", "version_line"]

APP_ENV = "SLEIPNIR_APP"
_TYPE_METAVARS: dict[type[Any], str] = {int: "INT", float: "FLOAT"}


def compiled_build() -> bool:
    """True when the request paths are compiled with mypyc (docs/architecture.md,
    "Compiled build"); found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("sleipnir.transport.h1_protocol")
    return spec is not None and not str(spec.origin).endswith(".py")


def version_line() -> str:
    """What `sleipnir --version` prints."""
    import platform

    python = f"{platform.python_implementation()} {platform.python_version()}"
    build = " (compiled with mypyc)" if compiled_build() else ""
    return f"sleipnir {__version__} with {python} on {platform.system()}{build}"


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.update(nargs=0, default=argparse.SUPPRESS)
        super().__init__(option_strings, argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> NoReturn:
        print(version_line())
        parser.exit(0)


def option_metavar(setting: Setting) -> str | None:
    """The placeholder shown after the flag, or None for flags that take no value."""
    if setting.is_flag:
        return None
    if setting.metavar:
        return setting.metavar
    if setting.choices:
        return "{" + ",".join(setting.choices) + "}"
    return _TYPE_METAVARS.get(setting.type, "TEXT")


def default_text(setting: Setting) -> str:
    """The default as shown in --help and docs/settings.md."""
    value = setting.default
    if setting.default_text is not None:
        return setting.default_text
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if value == "":
        return '""'
    if value == ():
        return "none"
    return str(value)


def help_text(setting: Setting, *, with_default: bool = True) -> str:
    """The setting's help and its default."""
    text = setting.help
    if with_default:
        text += f" (default: {default_text(setting)})"
    return text


def _arg_type(setting: Setting) -> Callable[[str], Any]:
    """argparse `type=`: parse and check one value so errors name the offending flag."""

    def convert(text: str) -> Any:
        try:
            if setting.multiple:
                check_value(setting, [text])
                return text  # Config checks and stores the whole list
            return check_value(setting, parse_text(setting, text))
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _argument_options(setting: Setting) -> dict[str, Any]:
    options: dict[str, Any] = {"dest": setting.name, "help": help_text(setting).replace("%", "%%")}
    if setting.is_flag:
        pair = setting.bool_style == "pair"
        options["action"] = argparse.BooleanOptionalAction if pair else "store_true"
    else:
        options.update(type=_arg_type(setting), metavar=option_metavar(setting))
        if setting.multiple:
            options["action"] = "append"
    return options


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one option per flagged entry of SETTINGS."""
    parser = argparse.ArgumentParser(
        prog="sleipnir",
        usage="%(prog)s [OPTIONS] APP",
        description="Serve an ASGI (or WSGI) application over HTTP/1.1.",
        epilog="Every option can also be set with a SLEIPNIR_<NAME> environment variable "
        "(e.g. SLEIPNIR_PORT=9000); the command line wins. See docs/settings.md.",
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "app",
        nargs="?",
        metavar="APP",
        help=f"the application as module:attribute, e.g. main:app (or set {APP_ENV})",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    groups: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.flags:
            if setting.group not in groups:
                groups[setting.group] = parser.add_argument_group(setting.group)
            groups[setting.group].add_argument(*setting.flags, **_argument_options(setting))
    return parser


def _env_value(setting: Setting, text: str) -> Any:
    """Parse a SLEIPNIR_* value: repeatable settings are split on their env separator."""
    if setting.multiple:
        return [item.strip() for item in text.split(setting.env_separator) if item.strip()]
    return parse_text(setting, text.strip())


def _settings_from_env(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> Any:
    found: dict[str, Any] = {}
    for setting in SETTINGS:
        text = environ.get(setting.env) if setting.env else None
        if text:
            try:
                found[setting.name] = check_value(setting, _env_value(setting, text))
            except (TypeError, ValueError) as exc:
                parser.error(f"environment variable {setting.env}: {exc}")
    return found


def build_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Parse `argv` (default: sys.argv[1:]) and `environ` (default: os.environ) into a Config.

    Usage errors and invalid values exit with status 2 like any argparse program.
    """
    parser = build_parser()
    given = vars(parser.parse_args(sys.argv[1:] if argv is None else list(argv)))
    environ = os.environ if environ is None else environ
    app = given.pop("app", None) or environ.get(APP_ENV)
    if not app:
        parser.error("the following arguments are required: APP")
    settings = {**_settings_from_env(parser, environ), **given}
    try:
        return Config(app, **settings)
    except (TypeError, ValueError, OSError, ImportError) as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `sleipnir` command and of `python -m sleipnir`."""
    config = build_config(argv)
    from sleipnir.main import run_config

    run_config(config)
