"""The file watcher behind `--reload`: it tells the supervisor which source files changed.

`make_watcher(config)` returns a `Watcher` on `config.reload_dirs` (default: the current
directory). `watcher.start(on_change)` watches in a daemon thread and calls
`on_change(paths)` from that thread once per batch of changes. Two backends:

* watchfiles (inotify, FSEvents, ...): used when it is importable. Idle, it costs a wake-up
  every `_STEP_MS` (to look at the stop flag) and one per quiet window, nothing more.
* polling: walks the directories every `reload_delay` seconds and compares the modification
  time and size of each watched file. Used when watchfiles is missing, when the environment
  sets SLEIPNIR_RELOAD_POLL=1 (network file systems, some containers), and when watchfiles
  fails while running (for example on reaching the OS limit of watches).

Invariants:

* Every change made after `start()` returns is reported (start() waits until the watches are
  in place, or the first snapshot is taken, bounded by `_READY_TIMEOUT_S`), including changes
  made while `on_change` runs: they make the next batch.
* A batch closes once `reload_delay` seconds pass without a new change, or `_LONGEST_BATCH_S`
  (at least) after it opened, so a file rewritten without pause still triggers. Paths are
  absolute, deduplicated and sorted; the same rules decide them for both backends.
* `stop()` returns within about `_STEP_MS` (or the callback still running, bounded by
  `_JOIN_TIMEOUT_S`); no callback starts after stop() was called.

Which paths count (`FileFilter`), with uvicorn's FileFilter as the reference
(uvicorn/supervisors/watchfilesreload.py; the rules here are our own):

1. Includes are `*.py` plus every --reload-include; excludes are `DEFAULT_EXCLUDES` plus every
   --reload-exclude. A pattern given both ways is an exclude (`--reload-exclude '*.py'` drops
   the default include), and a default exclude given as --reload-include is dropped
   (`--reload-include '.*'` watches dotfiles; `.git`, `.venv`, ... stay excluded by name).
2. A pattern without "/" matches one name: the file's, or a directory's between the watched
   directory and the file, never the watched directory's own path (a project under
   ~/.projects is watched). A pattern with "/" matches the end of the path
   (pathlib.PurePath.match), or all of it when absolute.
3. A file counts when its name matches an include, and neither its name nor any of those
   directories matches an exclude: a pattern naming a directory (`build`) excludes everything
   under it, and the polling walk never descends into it.
4. As in uvicorn, an include without glob characters (`.env`) names a file exactly and wins
   over the excludes of the file's name. It never reaches into an excluded directory: the two
   backends then agree without watching inside `.venv` or `node_modules`.
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, ClassVar

from sleipnir.logging import error_logger as logger

if TYPE_CHECKING:
    from sleipnir.config import Config

__all__ = [
    "DEFAULT_EXCLUDES",
    "DEFAULT_INCLUDES",
    "POLL_ENV",
    "FileFilter",
    "PollingWatcher",
    "Watcher",
    "WatchfilesWatcher",
    "make_watcher",
    "watch_dirs",
]

POLL_ENV = "SLEIPNIR_RELOAD_POLL"
DEFAULT_INCLUDES = ("*.py",)
DEFAULT_EXCLUDES = (
    ".*",  # dotfiles and dot directories, editor temp files such as .#a.py and .a.py.swp
    ".git",
    ".hg",
    ".svn",
    ".venv",
    ".tox",
    ".nox",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    "venv",
    "node_modules",
    "__pycache__",
    "*.py[cod]",
    "*~",
    "~*",
    ".#*",
)

_GLOB_CHARS = frozenset("*?[")
_TRUE = frozenset({"1", "true", "yes", "on"})
_STEP_MS = 50  # watchfiles looks at the stop flag this often
_MIN_DELAY_S = _STEP_MS / 1000  # reload_delay 0 must not poll in a busy loop
_LONGEST_BATCH_S = 2.0  # or 4 x reload_delay when that is longer
_READY_TIMEOUT_S = 10.0  # start() waits at most this long for the watches to be in place
_JOIN_TIMEOUT_S = 2.0
_SHOWN_PATHS = 10  # the log line names at most this many files


class _Patterns:
    """Globs compiled once: the ones without "/" as one regex over a name, the others
    matched against a whole path."""

    def __init__(self, patterns: Iterable[str]) -> None:
        names: list[str] = []
        paths: list[str] = []
        for pattern in dict.fromkeys(patterns):
            (paths if "/" in pattern else names).append(pattern)
        joined = "|".join(fnmatch.translate(name) for name in names)
        self._names = re.compile(joined) if names else None
        self._paths = tuple(paths)

    def match(self, path: str, name: str) -> bool:
        if self._names is not None and self._names.match(name):
            return True
        return bool(self._paths) and any(PurePath(path).match(p) for p in self._paths)


def _normalize(pattern: str) -> str:
    """`./build/` -> `build`: a trailing or leading ./ adds nothing."""
    pattern = pattern.strip()
    while pattern.startswith("./"):
        pattern = pattern[2:]
    return pattern.rstrip("/") or pattern


class FileFilter:
    """Decides which paths count as changes, by the rules in the module docstring.

    Pure: it looks only at the path strings, never at the file system."""

    def __init__(
        self, roots: Sequence[str], includes: Iterable[str] = (), excludes: Iterable[str] = ()
    ) -> None:
        user_in = {_normalize(p) for p in includes if p.strip()}
        user_ex = {_normalize(p) for p in excludes if p.strip()}
        included = (set(DEFAULT_INCLUDES) | user_in) - user_ex
        excluded = (set(DEFAULT_EXCLUDES) - user_in) | user_ex
        literal = {p for p in included if not _GLOB_CHARS.intersection(p)}
        # Longest first, so the innermost root owns a path (roots are not nested anyway).
        self._roots = tuple(sorted((r.rstrip(os.sep) + os.sep for r in roots), key=len)[::-1])
        self._include = _Patterns(sorted(included))
        self._exclude = _Patterns(sorted(excluded))
        self._literal = _Patterns(sorted(literal))

    def excludes_dir(self, path: str, name: str) -> bool:
        """True when nothing under this directory (below a watched one) counts."""
        return self._exclude.match(path, name)

    def wants_file(self, path: str, name: str) -> bool:
        """True when this file counts, its directories being known not to be excluded."""
        if self._literal.match(path, name):
            return True
        return not self._exclude.match(path, name) and self._include.match(path, name)

    def __call__(self, path: str) -> bool:
        """True when a change of `path` (absolute, file or directory) counts."""
        split = self._split(path)
        return split is not None and bool(split[1]) and self.wants_file(*split)

    def wants_dir(self, path: str) -> bool:
        """True when `path` is a watched directory, or below one and not excluded."""
        split = self._split(path)
        return split is not None and not (split[1] and self.excludes_dir(*split))

    def _split(self, path: str) -> tuple[str, str] | None:
        """`path` normalized and its name ("" for a watched directory); None when it is
        outside every watched directory or below an excluded one."""
        path = os.path.normpath(path)
        for root in self._roots:
            if path + os.sep == root:
                return path, ""
            if path.startswith(root):
                break
        else:
            return None
        parts = path[len(root) :].split(os.sep)
        directory = root.rstrip(os.sep) or os.sep
        for name in parts[:-1]:
            directory = os.path.join(directory, name)
            if self.excludes_dir(directory, name):
                return None
        return path, parts[-1]


def watch_dirs(reload_dirs: Sequence[str]) -> list[str]:
    """The directories to watch: absolute, existing, none inside another; the current
    directory when `reload_dirs` is empty or names no directory."""
    resolved = {Path(d).resolve() for d in reload_dirs}
    dirs = {d for d in resolved if d.is_dir()}
    for missing in sorted(resolved - dirs):
        logger.warning("--reload-dir %s is not a directory; it is not watched", missing)
    if not dirs:
        dirs = {Path.cwd().resolve()}
    return [str(d) for d in sorted(dirs) if not any(other in d.parents for other in dirs)]


def _display(paths: Sequence[str]) -> str:
    """The paths for the log line: relative to the current directory when inside it."""
    try:
        cwd = os.path.join(os.getcwd(), "")
    except OSError:  # the current directory was removed
        cwd = "\0"
    shown = [p[len(cwd) :] if p.startswith(cwd) else p for p in paths[:_SHOWN_PATHS]]
    more = len(paths) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


class _Batch:
    """Changed paths waiting for a quiet moment before they are reported."""

    def __init__(self, longest: float) -> None:
        self.longest = longest
        self.paths: set[str] = set()
        self.opened = 0.0

    def add(self, paths: Iterable[str]) -> None:
        if not self.paths:
            self.opened = time.monotonic()
        self.paths.update(paths)

    def too_old(self) -> bool:
        return bool(self.paths) and time.monotonic() - self.opened >= self.longest

    def take(self) -> list[str]:
        paths, self.paths = sorted(self.paths), set()
        return paths


class Watcher:
    """Watches `dirs` in a daemon thread; a subclass implements `_watch`, which returns once
    `_stopping` is set. `name` says which backend it is, for the supervisor's log lines."""

    name: ClassVar[str]

    def __init__(self, dirs: Sequence[str], file_filter: FileFilter, delay: float) -> None:
        self.dirs = list(dirs)
        self.filter = file_filter
        self.delay = max(delay, _MIN_DELAY_S)
        self._batch = _Batch(max(_LONGEST_BATCH_S, 4 * self.delay))
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_change: Callable[[list[str]], None] = lambda paths: None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, on_change: Callable[[list[str]], None]) -> None:
        """Start watching; return once the watches are in place (bounded)."""
        if self._thread is not None:
            raise RuntimeError("a Watcher can be started only once")
        self._on_change = on_change
        logger.info("Will watch for changes in these directories (%s): %s", self.name, self.dirs)
        self._thread = threading.Thread(target=self._run, name="sleipnir-reload", daemon=True)
        self._thread.start()
        if not self._ready.wait(_READY_TIMEOUT_S):
            logger.debug("file watcher still setting up after %ss", _READY_TIMEOUT_S)

    def stop(self) -> None:
        """Stop watching and join the thread; safe to call twice, or from `on_change`."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT_S)

    def _run(self) -> None:
        try:
            self._watch()
        except Exception:
            logger.exception("file watcher failed; changes are no longer detected")
        finally:
            self._ready.set()

    def _watch(self) -> None:
        raise NotImplementedError

    def _report(self, force: bool) -> None:
        """Hand the batch to on_change when it is due: `force` after a quiet window."""
        if not (force or self._batch.too_old()) or not self._batch.paths:
            return
        paths = self._batch.take()
        if self._stopping.is_set():
            return
        logger.warning("Changes detected in: %s", _display(paths))
        try:
            self._on_change(paths)
        except Exception:
            logger.exception("the reload callback failed")

    # The polling backend. It stats only files that pass the filter (os.scandir tells
    # directories from files without a stat), and never enters an excluded directory.

    def _poll(self) -> None:
        before = self._snapshot(self.dirs)
        self._ready.set()
        while not self._stopping.wait(self.delay):
            after = self._snapshot(self.dirs)
            changed = [p for p, sig in after.items() if before.get(p) != sig]
            changed += [p for p in before if p not in after]
            before = after
            if changed:
                self._batch.add(changed)
            self._report(force=not changed)

    def _snapshot(self, dirs: Iterable[str]) -> dict[str, tuple[int, int]]:
        """The wanted files under `dirs` (not excluded themselves), by path."""
        found: dict[str, tuple[int, int]] = {}
        pending = list(dirs)
        while pending and not self._stopping.is_set():
            try:
                entries = os.scandir(pending.pop())
            except OSError:
                continue  # removed meanwhile, or unreadable
            with entries:
                for entry in entries:
                    if _is_dir(entry):
                        if not self.filter.excludes_dir(entry.path, entry.name):
                            pending.append(entry.path)
                    elif self.filter.wants_file(entry.path, entry.name):
                        signature = _signature(entry)
                        if signature is not None:
                            found[entry.path] = signature
        return found


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """A directory to descend into: symbolic links are not followed (no loops)."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _signature(entry: os.DirEntry[str]) -> tuple[int, int] | None:
    """What a change of the file changes: its modification time and size."""
    try:
        st = entry.stat()
    except OSError:
        return None  # vanished between the listing and the stat, or a dangling link
    return st.st_mtime_ns, st.st_size


class PollingWatcher(Watcher):
    """Walks the directories every `reload_delay` seconds."""

    name = "polling"

    def _watch(self) -> None:
        self._poll()


class _StopFlag:
    """The `stop_event` handed to watchfiles. watchfiles calls is_set() every step once its
    watches are in place, so the first call also tells start() that watching has begun."""

    def __init__(self, stopping: threading.Event, ready: threading.Event) -> None:
        self._stopping = stopping
        self._ready = ready

    def is_set(self) -> bool:
        self._ready.set()
        return self._stopping.is_set()


class WatchfilesWatcher(Watcher):
    """OS file notifications through watchfiles; polling if watchfiles fails.

    A new directory is walked: the files created in it before its own watch was in place
    (mkdir then write, cp -r, git checkout) would be missed otherwise."""

    name = "watchfiles"

    def _expand(self, paths: set[str]) -> set[str]:
        """The changed files, with the wanted files of each new directory instead of it."""
        files = {p for p in paths if self.filter(p)}
        new_dirs = paths - files
        if new_dirs:
            outer = [d for d in new_dirs if not any(d.startswith(o + os.sep) for o in new_dirs)]
            files.update(self._snapshot(outer))
        return files

    def _watch(self) -> None:
        from watchfiles import Change, watch

        def keep(change: Change, path: str) -> bool:
            if self.filter(path):
                return True
            return change == Change.added and self.filter.wants_dir(path) and os.path.isdir(path)

        quiet_ms = round(self.delay * 1000)
        try:
            # rust_timeout ends a wait that saw no change for a whole quiet window: with
            # yield_on_timeout it yields an empty set, which closes the open batch.
            for changes in watch(
                *self.dirs,
                watch_filter=keep,
                debounce=quiet_ms,
                step=_STEP_MS,
                stop_event=_StopFlag(self._stopping, self._ready),
                rust_timeout=quiet_ms,
                yield_on_timeout=True,
                raise_interrupt=False,
                ignore_permission_denied=True,
            ):
                if self._stopping.is_set():
                    return
                self._batch.add(self._expand({path for _change, path in changes}))
                self._report(force=not changes)
        except Exception as exc:
            if self._stopping.is_set():
                return
            logger.warning("watchfiles failed (%s); polling for changes instead", exc)
            self._poll()


def make_watcher(config: Config) -> Watcher:
    """The watcher `config` asks for: watchfiles when importable, unless SLEIPNIR_RELOAD_POLL
    is set to a true value; the polling walk otherwise."""
    dirs = watch_dirs(config.reload_dirs)
    file_filter = FileFilter(dirs, config.reload_includes, config.reload_excludes)
    cls: type[Watcher] = WatchfilesWatcher
    if os.environ.get(POLL_ENV, "").strip().lower() in _TRUE:
        cls = PollingWatcher
    else:
        try:
            import watchfiles  # noqa: F401
        except ImportError:
            cls = PollingWatcher
    return cls(dirs, file_filter, config.reload_delay)
