"""Generate docs/settings.md from `config.SETTINGS`.

Run `python -m sleipnir._docgen > docs/settings.md`; tests/test_config.py fails when the
checked-in file differs from what this prints.
"""

from __future__ import annotations

import sys

from sleipnir.cli import APP_ENV, default_text, help_text, option_metavar
from sleipnir.config import SETTINGS, Setting

COMMAND = "python -m sleipnir._docgen > docs/settings.md"

_INTRO = f"""\
# Settings

<!-- GENERATED from sleipnir.config.SETTINGS by `{COMMAND}`. Do not edit by hand. -->

Every setting has one name, used three ways:

- **Command line**: `sleipnir [OPTIONS] APP`, e.g. `sleipnir main:app --port 9000`.
- **Environment**: `SLEIPNIR_<NAME>`, e.g. `SLEIPNIR_PORT=9000`. The variable follows the
  setting's name, not its flag (`SLEIPNIR_HEADERS` for `--header`), as uvicorn's `UVICORN_*`
  do. The application itself can come from `{APP_ENV}`. An empty variable counts as unset.
- **Python**: `sleipnir.run(app, port=9000)` or `sleipnir.Config(app, port=9000)`; the names
  are the same as uvicorn's.

The command line wins over the environment, which wins over the default.

In environment variables, booleans are `1/0`, `true/false`, `yes/no` or `on/off`; repeatable
settings are separated by commas, except `SLEIPNIR_HEADERS`, which takes one `NAME:VALUE` per
line (header values may contain commas). Numbers that may be unset accept `none`.

A setting marked *not available yet* is accepted so that uvicorn command lines parse, but asking
for it (a value other than its default) stops sleipnir with an error naming the issue that
will build it. `sleipnir --version` prints the version and exits.
"""

_TYPE_NAMES = {str: "str", int: "int", float: "float", bool: "bool", object: "callable"}


def _code(text: str) -> str:
    return f"`{text}`"


def _flags(setting: Setting) -> str:
    if not setting.flags:
        return "Python only"
    metavar = option_metavar(setting)
    flags = [f"{flag} {metavar}" if metavar else flag for flag in setting.flags]
    if setting.is_flag and setting.bool_style == "pair":
        flags += ["--no-" + flag[2:] for flag in setting.flags]
    return " ".join(_code(flag) for flag in flags)


def _type(setting: Setting) -> str:
    name = _TYPE_NAMES[setting.type]
    if setting.choices:
        name = "one of " + ", ".join(_code(choice) for choice in setting.choices)
    if setting.multiple:
        name = f"list of {name}"
    if setting.nullable and setting.type in (int, float):
        name += " or `none`"
    return name


def _row(setting: Setting) -> str:
    cells = [
        _code(setting.name),
        _flags(setting),
        _code(setting.env) if setting.env else "",
        _type(setting),
        default_text(setting) if setting.default_text else _code(default_text(setting)),
        help_text(setting, with_default=False).replace("|", "\\|"),
    ]
    return "| " + " | ".join(cells) + " |"


def render() -> str:
    """The whole of docs/settings.md."""
    lines = [_INTRO]
    groups = list(dict.fromkeys(setting.group for setting in SETTINGS))
    for group in groups:
        lines += [f"## {group}", ""]
        lines += ["| Name | Flag | Environment | Type | Default | Description |"]
        lines += ["| --- | --- | --- | --- | --- | --- |"]
        lines += [_row(s) for s in SETTINGS if s.group == group]
        lines += [""]
    return "\n".join(lines)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
