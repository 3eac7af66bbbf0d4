"""The --reload file watcher (sleipnir.reload): real files in tmp_path, both backends.

Nothing sleeps: a test waits for a callback on a queue with a deadline. To show that a change
is *not* reported, it then changes a marker file and waits for the marker's batch: a change
made before the marker's would be in that batch or an earlier one.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for
from sleipnir import Config
from sleipnir.reload import (
    POLL_ENV,
    FileFilter,
    PollingWatcher,
    Watcher,
    WatchfilesWatcher,
    make_watcher,
    watch_dirs,
)

pytestmark = pytest.mark.timeout(30)

WAIT_S = 10.0  # generous: a loaded CI machine
STOP_S = 0.5
BACKENDS = ["watchfiles", "polling"]


class Batches:
    """The on_change callback of a test: every batch lands on a queue."""

    def __init__(self) -> None:
        self.queue: queue.Queue[list[str]] = queue.Queue()
        self.seen: list[list[str]] = []

    def __call__(self, paths: list[str]) -> None:
        self.queue.put(paths)

    def wait_for(self, path: Path, timeout: float = WAIT_S) -> list[str]:
        """Collect batches until one names `path`; return that batch."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                batch = self.queue.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"no batch named {path} within {timeout}s") from None
            self.seen.append(batch)
            if str(path) in batch:
                return batch

    @property
    def reported(self) -> set[str]:
        return {path for batch in self.seen for path in batch}


class Run:
    """Starts watchers for one test and stops them all at teardown."""

    def __init__(self, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.backend = backend
        self.watchers: list[Watcher] = []
        monkeypatch.setenv(POLL_ENV, "1" if backend == "polling" else "0")

    def start(
        self,
        dirs: list[Path],
        on_change: Callable[[Watcher, list[str]], None] | None = None,
        **settings: Any,
    ) -> tuple[Watcher, Batches]:
        """Start a watcher on `dirs`; `on_change(watcher, paths)`, when given, is called
        instead of putting each batch on the queue."""
        settings.setdefault("reload_delay", 0.05)
        config = Config("app:app", reload_dirs=[str(d) for d in dirs], **settings)
        watcher = make_watcher(config)
        assert watcher.name == self.backend
        self.watchers.append(watcher)
        batches = Batches()
        watcher.start(batches if on_change is None else lambda paths: on_change(watcher, paths))
        return watcher, batches


@pytest.fixture(params=BACKENDS)
def run(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    started = Run(str(request.param), monkeypatch)
    yield started
    for watcher in started.watchers:
        watcher.stop()
        assert not watcher.running


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """What sleipnir.error logs, whatever an earlier test did to logging."""
    logger = logging.getLogger("sleipnir.error")
    handler = ListHandler()
    seen = handler.records
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)
    logger.setLevel(level)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------ both backends


def test_python_edit_is_reported(run: Run, tmp_path: Path) -> None:
    app = write(tmp_path / "pkg" / "app.py", "a")
    _, batches = run.start([tmp_path])
    write(app, "a = 1\n")
    assert batches.wait_for(app) == [str(app)]


@pytest.mark.parametrize("includes", [[], ["*.txt"]], ids=["default", "include-txt"])
def test_text_file_counts_only_when_included(run: Run, tmp_path: Path, includes: list[str]) -> None:
    notes = write(tmp_path / "notes.txt", "a")
    marker = write(tmp_path / "marker.py", "a")
    _, batches = run.start([tmp_path], reload_includes=includes)
    write(notes, "more notes")
    write(marker, "changed")
    batches.wait_for(marker)
    assert (str(notes) in batches.reported) is bool(includes)


def test_excluded_directories_are_not_reported(run: Run, tmp_path: Path) -> None:
    ignored = [
        write(tmp_path / ".venv" / "lib" / "x.py", "a"),
        write(tmp_path / "__pycache__" / "x.cpython-312.pyc", "a"),
        write(tmp_path / "pkg" / "__pycache__" / "x.py", "a"),
        write(tmp_path / "node_modules" / "a.py", "a"),
        write(tmp_path / ".git" / "hooks" / "h.py", "a"),
        write(tmp_path / "build" / "lib" / "a.py", "a"),
        write(tmp_path / ".app.py.swp", "a"),
    ]
    marker = write(tmp_path / "marker.py", "a")
    _, batches = run.start([tmp_path], reload_excludes=["build"])
    for path in ignored:
        write(path, "changed")
    new = write(tmp_path / "node_modules" / "new" / "b.py", "a")
    write(marker, "changed")
    batches.wait_for(marker)
    assert batches.reported.isdisjoint(map(str, [*ignored, new]))


def test_new_and_deleted_files_are_reported(run: Run, tmp_path: Path) -> None:
    old = write(tmp_path / "old.py", "a")
    _, batches = run.start([tmp_path])
    new = write(tmp_path / "sub" / "new.py", "a")
    batches.wait_for(new)
    old.unlink()
    batches.wait_for(old)


def test_directory_moved_in_reports_its_files(run: Run, tmp_path: Path) -> None:
    # One rename event for the directory: watchfiles is told of no file in it.
    watched, outside = tmp_path / "watched", tmp_path / "outside"
    files = [
        write(outside / "pkg" / "__init__.py", "a"),
        write(outside / "pkg" / "sub" / "m.py", "a"),
    ]
    write(outside / "pkg" / "README.txt", "a")
    write(outside / "pkg" / "__pycache__" / "m.py", "a")
    watched.mkdir()
    _, batches = run.start([watched])
    (outside / "pkg").rename(watched / "pkg")
    moved = [str(watched / p.relative_to(outside)) for p in files]
    assert batches.wait_for(watched / "pkg" / "__init__.py") == sorted(moved)


def test_changes_close_together_are_one_batch(run: Run, tmp_path: Path) -> None:
    files = [write(tmp_path / f"m{i}.py", "a") for i in range(3)]
    _, batches = run.start([tmp_path], reload_delay=0.5)
    for path in files:
        write(path, "changed")
    assert batches.wait_for(files[0]) == sorted(map(str, files))


def test_stop_is_prompt_and_final(run: Run, tmp_path: Path) -> None:
    app = write(tmp_path / "app.py", "a")
    # A long quiet window: stop() must not wait for it, nor report the pending change.
    watcher, batches = run.start([tmp_path], reload_delay=5.0)
    write(app, "changed")
    began = time.monotonic()
    watcher.stop()
    assert time.monotonic() - began < STOP_S
    assert not watcher.running  # joined: no callback can come any more
    watcher.stop()  # idempotent
    write(app, "changed again")
    assert batches.queue.empty()


def test_nested_reload_dirs_are_watched_once(
    run: Run, tmp_path: Path, records: list[logging.LogRecord]
) -> None:
    sub = tmp_path / "sub"
    mod = write(sub / "deeper" / "mod.py", "a")
    watcher, batches = run.start([sub, tmp_path, sub / "deeper"])
    assert watcher.dirs == [str(tmp_path)]
    assert records[0].getMessage().endswith(f"): ['{tmp_path}']")
    write(mod, "changed")
    assert batches.wait_for(mod) == [str(mod)]


def test_log_lines(
    run: Run, tmp_path: Path, records: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = write(tmp_path / "app.py", "a")
    _, batches = run.start([])  # the current directory
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (
            logging.INFO,
            f"Will watch for changes in these directories ({run.backend}): ['{tmp_path}']",
        )
    ]
    write(app, "changed")
    batches.wait_for(app)
    assert (records[-1].levelno, records[-1].getMessage()) == (
        logging.WARNING,
        "Changes detected in: app.py",
    )


def test_failing_callback_is_logged_and_watching_goes_on(
    run: Run, tmp_path: Path, records: list[logging.LogRecord]
) -> None:
    first, second = write(tmp_path / "first.py", "a"), write(tmp_path / "second.py", "a")
    calls = Batches()

    def on_change(watcher: Watcher, paths: list[str]) -> None:
        calls(paths)
        raise RuntimeError("boom")

    run.start([tmp_path], on_change)
    write(first, "changed")
    calls.wait_for(first)
    write(second, "changed")
    calls.wait_for(second)
    failures = [r for r in records if r.exc_info and "callback failed" in r.getMessage()]
    assert len(failures) >= 2


def test_stop_from_the_callback(run: Run, tmp_path: Path) -> None:
    app = write(tmp_path / "app.py", "a")
    called = threading.Event()

    def on_change(watcher: Watcher, paths: list[str]) -> None:
        called.set()
        watcher.stop()  # does not join its own thread

    watcher, _ = run.start([tmp_path], on_change)
    write(app, "changed")
    assert called.wait(WAIT_S)
    wait_for(lambda: not watcher.running, WAIT_S, "the watcher thread to end")


# ------------------------------------------------------------------------- backend specifics


def test_watchfiles_failure_falls_back_to_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, records: list[logging.LogRecord]
) -> None:
    import watchfiles

    def broken(*args: Any, **kwargs: Any) -> Iterator[set[Any]]:
        raise OSError("OS file watch limit reached")

    monkeypatch.setattr(watchfiles, "watch", broken)
    app = write(tmp_path / "app.py", "a")
    watcher = WatchfilesWatcher([str(tmp_path)], FileFilter([str(tmp_path)]), 0.05)
    batches = Batches()
    watcher.start(batches)
    try:
        write(app, "changed")
        batches.wait_for(app)
    finally:
        watcher.stop()
    assert any("polling for changes instead" in r.getMessage() for r in records)


@pytest.mark.parametrize(
    ("env", "importable", "expected"),
    [
        ("", True, WatchfilesWatcher),
        ("0", True, WatchfilesWatcher),
        ("1", True, PollingWatcher),
        ("true", True, PollingWatcher),
        ("", False, PollingWatcher),
    ],
)
def test_make_watcher_picks_the_backend(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: str,
    importable: bool,
    expected: type[Watcher],
) -> None:
    monkeypatch.setenv(POLL_ENV, env)
    if not importable:
        monkeypatch.setitem(sys.modules, "watchfiles", None)  # import raises ImportError
    watcher = make_watcher(Config("app:app", reload_dirs=[str(tmp_path)], reload_delay=0.3))
    assert type(watcher) is expected
    assert watcher.delay == 0.3
    assert not watcher.running


def test_start_twice_is_an_error(tmp_path: Path) -> None:
    watcher = PollingWatcher([str(tmp_path)], FileFilter([str(tmp_path)]), 0.05)
    watcher.start(Batches())
    try:
        with pytest.raises(RuntimeError):
            watcher.start(Batches())
    finally:
        watcher.stop()


# ------------------------------------------------------------------ directories and the filter


def test_watch_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, records: list[logging.LogRecord]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    write(tmp_path / "file.py", "a")
    assert watch_dirs([]) == [str(tmp_path)]
    assert watch_dirs(["a/b", "c", "a", "./a/"]) == [str(tmp_path / "a"), str(tmp_path / "c")]
    assert watch_dirs(["file.py"]) == [str(tmp_path)]
    assert "file.py is not a directory" in records[-1].getMessage()


FILTER_CASES = [
    # (path, includes, excludes, counts)
    ("/w/app.py", [], [], True),
    ("/w/pkg/sub/mod.py", [], [], True),
    ("/w/./pkg/../app.py", [], [], True),
    ("/w/notes.txt", [], [], False),
    ("/w/notes.txt", ["*.txt"], [], True),
    ("/w/tpl/page.html", ["*.html"], [], True),
    ("/w/pkg", [], [], False),  # a directory
    ("/w", [], [], False),  # the watched directory itself
    ("/elsewhere/app.py", [], [], False),
    ("/w2/app.py", [], [], False),  # /w is not a prefix of /w2
    # the default excludes
    ("/w/.venv/lib/x.py", [], [], False),
    ("/w/venv/lib/x.py", [], [], False),
    ("/w/node_modules/pkg/a.py", [], [], False),
    ("/w/pkg/__pycache__/x.py", [], [], False),
    ("/w/x.pyc", [], [], False),
    ("/w/x.pyo", [], [], False),
    ("/w/.hidden.py", [], [], False),
    ("/w/.github/x.py", [], [], False),
    ("/w/.#app.py", [], [], False),
    ("/w/app.py~", [], [], False),
    ("/w/~app.py", [], [], False),
    # user excludes: a name excludes a directory anywhere below the root
    ("/w/build/a.py", [], ["build"], False),
    ("/w/src/build/a.py", [], ["build/"], False),
    ("/w/builder/a.py", [], ["build"], True),
    ("/w/test_app.py", [], ["test_*.py"], False),
    ("/w/src/gen/a.py", [], ["src/gen"], False),  # a path pattern matches the end
    ("/w/gen/a.py", [], ["src/gen"], True),
    ("/w/skip.py", [], ["/w/skip.py"], False),  # an absolute one all of it
    # include against exclude
    ("/w/app.py", [], ["*.py"], False),  # given both ways: excluded
    ("/w/t.html", ["*.html"], ["*.py"], True),
    ("/w/.env", [], [], False),
    ("/w/.env", [".env"], [], True),  # a literal include wins over the name excludes
    ("/w/pkg/.env", [".env"], [], True),
    ("/w/.venv/.env", [".env"], [], False),  # never inside an excluded directory
    ("/w/.env", [".env"], [".env"], False),
    ("/w/.github/x.py", [".*"], [], True),  # including .* drops that default exclude
    ("/w/.git/x.py", [".*"], [], False),  # .git stays excluded by name
    ("/w/templates/a.html", ["templates/*.html"], [], True),
    ("/w/other/a.html", ["templates/*.html"], [], False),
]


@pytest.mark.parametrize(("path", "includes", "excludes", "counts"), FILTER_CASES)
def test_file_filter(path: str, includes: list[str], excludes: list[str], counts: bool) -> None:
    assert FileFilter(["/w"], includes, excludes)(path) is counts


def test_file_filter_wants_dir() -> None:
    check = FileFilter(["/w"], excludes=["build"])
    assert check.wants_dir("/w")
    assert check.wants_dir("/w/pkg/sub")
    assert not check.wants_dir("/w/build")
    assert not check.wants_dir("/w/pkg/build/sub")
    assert not check.wants_dir("/w/.venv")
    assert not check.wants_dir("/elsewhere")


def test_file_filter_matches_names_below_the_root_only() -> None:
    check = FileFilter(["/home/u/.projects/app", "/srv/venv/code"])
    assert check("/home/u/.projects/app/main.py")
    assert check("/srv/venv/code/main.py")
    assert not check("/home/u/.projects/app/.venv/main.py")
