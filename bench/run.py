#!/usr/bin/env python3
"""Benchmark sleipnir against uvicorn (httptools + uvloop) on one machine, over loopback.

Each measurement starts one server pinned to one CPU (taskset -c 1), checks that it answers,
loads it with wrk pinned to the other CPU (taskset -c 0) for a fixed time after a short
warm-up, reads the server's CPU time and peak RSS from /proc, and stops it by PID. Servers
alternate (A B, A B, ...) for R rounds; tables give medians over rounds and the median of the
per-round ratios to the baseline (uvicorn-httptools-uvloop). The WebSocket workload (ws-echo)
works the same way with ws_client.py (this folder) in place of wrk and messages in place of
requests.

Modes:
    http     (default) functional check, then the workloads (wrk; ws_client.py for ws-echo)
    targets  issue 6's targets: the workloads they need with sleipnir, uvicorn, Granian (and
             hypercorn for HTTP/2), one TARGETS table, and targets.png (bench/plot.py)
    check    functional check only: one GET / POST of each kind per server, no load
    setup    install wrk and the bench venv, print versions
    list     server presets and workloads
    plot     [RESULTS_DIR] draw targets.png from a targets run (default: the newest)

The harness needs only the standard library. It installs what it runs: wrk via apt if missing,
and a venv ($BENCH_WORK/venv) with the pinned requirements.txt and sleipnir from this checkout:
its compiled build (scripts/compiled-wheel; rebuilt whenever src/ changes, so the working tree is
what gets measured), or with --source the checkout itself, editable and interpreted. See
README.md in this folder.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK = Path(
    os.environ.get("BENCH_WORK", Path(os.environ.get("TMPDIR", "/tmp")) / "sleipnir-repo-bench")
)
VENV = Path(os.environ.get("BENCH_VENV", WORK / "venv"))
VBIN = VENV / "bin"
HOST = "127.0.0.1"
SERVER_CPU = os.environ.get("BENCH_SERVER_CPU", "1")
CLIENT_CPU = os.environ.get("BENCH_CLIENT_CPU", "0")
BASELINE = "uvicorn-httptools-uvloop"
READY_TIMEOUT_S = 30.0  # start-up, including imports, of a server on a busy machine
STOP_GRACE_S = 3.0  # SIGTERM -> SIGKILL

# --------------------------------------------------------------------------------------------
# Servers. Template fields: {bin} venv bin dir, {app} module:attr, {host}, {port}, {bench}.
# `needs`: which requirement sets the preset runs from ("sleipnir": this checkout).
# --------------------------------------------------------------------------------------------
COMMON = "{app} --host {host} --port {port} --no-access-log --log-level warning"


@dataclass(frozen=True)
class Preset:
    cmd: str
    needs: frozenset[str] = frozenset({"base"})
    note: str = ""
    # takes uvicorn's --ws flag: WebSocket workloads append `--ws <--ws option>` to its command
    ws_flag: bool = False
    h2: bool = False  # serves HTTP/2 with prior knowledge on the same port (the h2 workload)
    # the preset that runs this server on its pure-Python path (h11 + asyncio), for the
    # pure-Python workloads; "" if it has none
    pure: str = ""


PRESETS: dict[str, Preset] = {
    "sleipnir": Preset(
        "{bin}/sleipnir " + COMMON + " --http httptools --loop uvloop",
        frozenset({"base", "sleipnir"}),
        "this checkout, httptools + uvloop",
        ws_flag=True,
        h2=True,
        pure="sleipnir-h11",
    ),
    "uvicorn-httptools-uvloop": Preset(
        "{bin}/uvicorn " + COMMON + " --http httptools --loop uvloop",
        note="baseline",
        ws_flag=True,
        pure="uvicorn-h11-asyncio",
    ),
    "sleipnir-h11": Preset(
        "{bin}/sleipnir " + COMMON + " --http h11 --loop asyncio",
        frozenset({"base", "sleipnir"}),
        "pure-Python parser and loop",
        ws_flag=True,
        pure="sleipnir-h11",
    ),
    "uvicorn-h11-asyncio": Preset(
        "{bin}/uvicorn " + COMMON + " --http h11 --loop asyncio",
        note="baseline of the pure-Python workloads",
        ws_flag=True,
        pure="uvicorn-h11-asyncio",
    ),
    "granian-1core": Preset(
        "{bin}/granian {app} --interface asgi --host {host} --port {port} --no-access-log"
        " --log-level warning --workers 1 --runtime-threads 1 --runtime-mode st"
        " --blocking-threads 1",
        frozenset({"base", "peers"}),
        "Rust I/O; one worker, one runtime thread",
        h2=True,
    ),
    "hypercorn-uvloop": Preset(
        "{bin}/hypercorn {app} -c {bench}/hypercorn.toml -b {host}:{port} --log-level warning"
        " -k uvloop",
        frozenset({"base", "peers"}),
        "supervisor + 1 worker process",
        h2=True,
    ),
}
DEFAULT_SERVERS = ["sleipnir", BASELINE]

REQUIREMENT_FILES = {
    "base": ["-r", str(BENCH_DIR / "requirements.txt")],
    "peers": ["-r", str(BENCH_DIR / "requirements-peers.txt")],
    # (the compiled build's wheel, or with --source this checkout: install_sleipnir)
    "sleipnir": ["[standard]", "-c", str(BENCH_DIR / "requirements.txt")],
    "plot": ["-r", str(BENCH_DIR / "requirements-plot.txt")],  # bench/plot.py only
}
STAMP_INPUTS = {
    "base": [BENCH_DIR / "requirements.txt"],
    "peers": [BENCH_DIR / "requirements-peers.txt"],
    "sleipnir": [REPO / "pyproject.toml", *sorted((REPO / "src").rglob("*.py"))],
    "plot": [BENCH_DIR / "requirements-plot.txt"],
}


# --------------------------------------------------------------------------------------------
# Workloads: HTTP with wrk -t1 -c{conns} (Lua scripts in lua/), WebSocket with ws_client.py
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    app: str
    conns: int
    what: str
    lua: str = ""
    lua_args: tuple[str, ...] = ()
    ws_size: int = 0  # > 0: a WebSocket echo workload, messages of this many bytes
    h2_streams: int = 0  # > 0: HTTP/2 with h2load, this many concurrent streams per connection
    baseline: str = ""  # compare with this preset instead of --baseline (if it runs)
    pure_python: bool = False  # each server runs as its `Preset.pure` (none: skipped)
    startup: bool = False  # no load: STARTS_PER_ROUND timed starts (spawn to first 200)

    @property
    def unit(self) -> str:
        return "msg" if self.ws_size else "req"

    @property
    def client(self) -> str:
        return "client" if self.ws_size else "h2load" if self.h2_streams else "wrk"

    def accepts(self, preset: Preset) -> str:
        """Why `preset` cannot run this workload, or "" if it can."""
        if self.h2_streams and not preset.h2:
            return "no HTTP/2"
        if self.pure_python and not preset.pure:
            return "no pure-Python mode"
        return ""


WORKLOADS: dict[str, Workload] = {
    "plaintext": Workload("apps:plaintext", 64, "GET, 13-byte text/plain"),
    "json": Workload("apps:json", 64, "GET, json.dumps per request (28 bytes)"),
    "echo-4k": Workload("apps:echo", 64, "POST 4 KiB, body echoed back", "post.lua", ("4096",)),
    "large-1m": Workload("apps:large", 16, "GET, 1 MiB response"),
    "pipeline16": Workload(
        "apps:plaintext", 64, "plaintext, 16 requests per write", "pipeline.lua", ("16",)
    ),
    "stream-100": Workload(
        "apps:stream", 64, "GET, 100 body messages of 64 bytes, chunked: 6,400-byte body"
    ),
    "h2": Workload(
        "apps:plaintext",
        16,
        "HTTP/2 cleartext (prior knowledge), 16 streams per connection, 13-byte text/plain",
        h2_streams=16,
        baseline="hypercorn-uvloop",  # uvicorn has no HTTP/2
    ),
    "ws-echo": Workload(
        "ws_echo:app",
        32,
        "WebSocket echo, 64-byte text, one message in flight per connection",
        ws_size=64,
    ),
    "plaintext-h11": Workload(
        "apps:plaintext",
        64,
        "plaintext on the pure-Python path: --http h11 --loop asyncio",
        baseline="uvicorn-h11-asyncio",
        pure_python=True,
    ),
    "startup": Workload("apps:plaintext", 0, "spawn to the first 200 of GET /", startup=True),
}
STARTS_PER_ROUND = 5  # timed starts of each server per round in the startup workload
READY_POLL_S = 0.002  # wait_ready's pause between connect + GET attempts
WS_IMPLS = ("websockets", "wsproto")

LIVE: dict[int, subprocess.Popen[bytes]] = {}  # every server still running, killed at exit


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------
def run_checked(argv: Sequence[str], **kw: Any) -> None:
    subprocess.run(list(argv), check=True, **kw)


def ensure_tools() -> None:
    """wrk, h2load and taskset, from Debian packages if missing (as root, or with password-less
    sudo)."""
    missing = [t for t in ("wrk", "h2load", "taskset") if not shutil.which(t)]
    if not missing:
        return
    sudo: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"]).returncode == 0:
            sudo = ["sudo", "-n"]
        else:
            sys.exit(
                f"missing {missing}: install them (apt-get install wrk util-linux) or run as root"
            )
    log(f"[setup] apt-get installing wrk nghttp2-client util-linux (missing: {missing})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_checked([*sudo, "apt-get", "update", "-qq"], env=env)
    run_checked(
        [*sudo, "apt-get", "install", "-y", "-qq", "wrk", "nghttp2-client", "util-linux"],
        env=env,
        stdout=subprocess.DEVNULL,
    )


def base_python() -> str:
    for cand in (os.environ.get("BENCH_PYTHON", ""), "python3.11", "python3"):
        path = shutil.which(cand) if cand else None
        if (
            path
            and subprocess.run(
                [path, "-c", "import sys; assert sys.version_info >= (3, 10)"], capture_output=True
            ).returncode
            == 0
        ):
            return path
    sys.exit("no Python >= 3.10 found for the bench venv (set BENCH_PYTHON)")


def stamp_of(key: str, source: bool) -> str:
    h = hashlib.sha256(key.encode() + (b" source" if source and key == "sleipnir" else b""))
    for path in STAMP_INPUTS[key]:
        h.update(path.read_bytes())
    return h.hexdigest()


def ensure_venv(needs: Iterable[str], source: bool = False) -> None:
    """Create the venv and (re)install each needed requirement set whose inputs changed;
    sleipnir's compiled build, or with ``source`` this checkout, editable."""
    py = VBIN / "python"
    if not py.exists():
        base = base_python()
        log(f"[setup] creating {VENV} with {base}")
        VENV.parent.mkdir(parents=True, exist_ok=True)
        run_checked([base, "-m", "venv", str(VENV)])
        pip(["--upgrade", "pip"])
    for key in sorted(needs, key=list(REQUIREMENT_FILES).index):
        stamp_file = VENV / f".bench-installed-{key}"
        want = stamp_of(key, source)
        if stamp_file.exists() and stamp_file.read_text() == want:
            continue
        if key == "sleipnir":
            install_sleipnir(source)
        else:
            log(f"[setup] pip installing {key} into {VENV}")
            pip(REQUIREMENT_FILES[key])
        stamp_file.write_text(want)


def install_sleipnir(source: bool) -> None:
    extra, *constraints = REQUIREMENT_FILES["sleipnir"]
    subprocess.run([str(VBIN / "python"), "-m", "pip", "uninstall", "-q", "-y", "sleipnir"])
    if source:
        log(f"[setup] pip installing this checkout (editable, interpreted) into {VENV}")
        pip(["-e", f"{REPO}{extra}", *constraints])
        return
    log(f"[setup] building sleipnir's compiled wheel (scripts/compiled-wheel) for {VENV}")
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [str(REPO / "scripts" / "compiled-wheel"), str(VBIN / "python"), tmp],
            stdout=subprocess.PIPE,
            text=True,
        )
        if out.returncode:
            sys.exit("scripts/compiled-wheel failed")
        pip([out.stdout.strip() + extra, *constraints])


def pip(args: Sequence[str]) -> None:
    cmd = [str(VBIN / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    out = subprocess.run([*cmd, *args], capture_output=True, text=True)
    noise = re.compile(r"^WARNING: (Location|Url) '")  # a local pip.conf's missing index dirs
    for line in (out.stdout + out.stderr).splitlines():
        if not noise.match(line):
            log(line)
    if out.returncode:
        sys.exit(f"pip install {' '.join(args)} failed")


def versions() -> dict[str, str]:
    code = (
        "import importlib.metadata as m, sys\n"
        "print('python', sys.version.split()[0])\n"
        "for p in ['sleipnir', 'uvicorn', 'uvloop', 'httptools', 'h11', 'websockets', 'wsproto',\n"
        "          'granian', 'hypercorn']:\n"
        "    try: print(p, m.version(p))\n"
        "    except Exception: pass\n"
        "from sleipnir.cli import compiled_build\n"
        "print('sleipnir-build', 'compiled' if compiled_build() else 'source')\n"
    )
    out = subprocess.run([str(VBIN / "python"), "-c", code], capture_output=True, text=True)
    found = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    m = re.search(r"wrk (\d+\.\d+\.\d+)", wrk.stdout + wrk.stderr)
    if m:
        found["wrk"] = m.group(1)
    return found


def git_describe() -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


# --------------------------------------------------------------------------------------------
# Processes (/proc; every kill is by PID)
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    return [int(x) for tid in tids for x in _read(f"/proc/{pid}/task/{tid}/children").split()]


def process_tree(pid: int) -> list[int]:
    seen: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.append(p)
            todo += children(p)
    return seen


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of one process (VmHWM), KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of the given processes (all their threads), seconds."""
    ticks = 0
    for pid in pids:
        fields = _read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
        if len(fields) > 12:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def alive(pid: int) -> bool:
    state = _read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
    return bool(state) and state[0] != "Z"


class Server:
    """One server process, pinned to SERVER_CPU, logging to out_dir/server-NAME.log."""

    def __init__(
        self, name: str, preset: Preset, app: str, out_dir: Path, extra_args: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.port = free_port()
        fields = {"bin": VBIN, "app": app, "host": HOST, "port": self.port, "bench": BENCH_DIR}
        self.argv = [*shlex.split(preset.cmd.format(**fields)), *extra_args]
        self.log_path = out_dir / f"server-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []
        self.t0 = 0.0
        self.log_offset = 0  # where this start's output begins in the (appended) log

    def start(self) -> Server:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), env.get("PYTHONPATH", "")])
        env["PATH"] = os.pathsep.join([str(VBIN), env.get("PATH", "")])
        # PYTHONDONTWRITEBYTECODE: let the first start cache the bytecode of this checkout's
        # edited modules (pip compiled the others), as an install would, so that start-up
        # does not time recompiling them
        for var in (
            "WEB_CONCURRENCY",
            "COVERAGE_PROCESS_START",
            "COVERAGE_PROCESS_CONFIG",
            "PYTHONDONTWRITEBYTECODE",
        ):
            env.pop(var, None)
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n==== {dt.datetime.now().isoformat()} {shlex.join(self.argv)}\n".encode())
            logf.flush()
            self.log_offset = logf.tell()
            self.t0 = time.perf_counter()
            self.proc = subprocess.Popen(
                ["taskset", "-c", SERVER_CPU, *self.argv],
                cwd=BENCH_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
        LIVE[self.proc.pid] = self.proc
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds from start until `GET /` answered 200; raises if it never does."""
        assert self.proc is not None
        deadline = self.t0 + timeout
        request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0) as s:
                    s.sendall(request)
                    if s.recv(64).startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                        return time.perf_counter() - self.t0
            except OSError:
                pass
            time.sleep(READY_POLL_S)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        """The last lines this start wrote to the log, for error messages."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode(errors="replace").strip().splitlines()
        except OSError:
            text = []
        return " / ".join(text[-lines:]) + f" (log: {self.log_path})"

    def snapshot_pids(self) -> list[int]:
        if self.proc is not None:
            for p in process_tree(self.proc.pid):
                if p not in self.pids:
                    self.pids.append(p)
        return self.pids

    def peak_rss_mib(self) -> float:
        """Sum of VmHWM over the server's process tree (supervisor + workers), MiB."""
        return sum(vm_hwm_kib(p) for p in self.snapshot_pids()) / 1024

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = self.snapshot_pids()
        main = self.proc.pid
        kill(main, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            kill(main)
            self.proc.wait(timeout=5)
        for p in pids:  # workers a supervisor left behind: one PID at a time
            if p != main and alive(p):
                kill(p)
        LIVE.pop(main, None)
        self.proc = None


def kill_all_live() -> None:
    for pid, proc in list(LIVE.items()):
        for p in process_tree(pid):
            kill(p)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        LIVE.pop(pid, None)


# --------------------------------------------------------------------------------------------
# Functional check: one request of each kind, so a broken server fails before any load
# --------------------------------------------------------------------------------------------
# apps.STREAM_BODY (the harness does not import the apps): chunk i is "NN" + 61 "-" + "\n"
STREAM_BODY = b"".join(b"%02d" % i + b"-" * 61 + b"\n" for i in range(100))


def check_server(name: str, preset: Preset, out_dir: Path) -> dict[str, str]:
    """Starts the server with apps:router; returns {check: "ok" | "FAIL ..."}."""
    srv = Server(name, preset, "apps:router", out_dir).start()
    results: dict[str, str] = {}
    try:
        srv.wait_ready()
    except RuntimeError as e:
        srv.stop()
        return {"start": f"FAIL {e}"}
    echo_body = bytes(range(256)) * 16  # 4 KiB, every byte value

    def request(method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(HOST, srv.port, timeout=10)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    checks: dict[str, tuple[Callable[[], tuple[int, bytes]], Callable[[bytes], bool]]] = {
        "GET plaintext": (lambda: request("GET", "/plaintext"), lambda b: b == b"Hello, world!"),
        "GET json": (
            lambda: request("GET", "/json"),
            lambda b: json.loads(b) == {"message": "Hello, world!"},
        ),
        "POST echo 4k": (lambda: request("POST", "/echo", echo_body), lambda b: b == echo_body),
        "GET large 1m": (lambda: request("GET", "/large"), lambda b: b == b"x" * 1048576),
        "GET stream 100": (lambda: request("GET", "/stream"), lambda b: b == STREAM_BODY),
    }

    def verdict(call: Callable[[], tuple[int, bytes]], body_ok: Callable[[bytes], bool]) -> str:
        try:
            status, body = call()
            ok = status == 200 and body_ok(body)
        except (OSError, http.client.HTTPException, ValueError) as e:
            return f"FAIL {e!r}"
        return "ok" if ok else f"FAIL {status} {body[:60]!r} ({len(body)} B)"

    try:
        for label, (call, body_ok) in checks.items():
            results[label] = verdict(call, body_ok)
        results["pipelined x16"] = check_pipelined(srv.port, 16)
    finally:
        srv.stop()
    return results


def check_pipelined(port: int, depth: int) -> str:
    """`depth` GETs in one write on one connection: every one must get its 200 and body."""
    req = f"GET /plaintext HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    data = b""
    try:
        with socket.create_connection((HOST, port), timeout=10) as s:
            s.sendall(req * depth)
            deadline = time.monotonic() + 10
            while data.count(b"Hello, world!") < depth and time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        return f"FAIL {e!r}"
    got = data.count(b"HTTP/1.1 200 ")
    return "ok" if got == depth and data.count(b"Hello, world!") == depth else f"FAIL {got}/{depth}"


def run_checks(names: Sequence[str], out_dir: Path) -> tuple[bool, list[str]]:
    all_ok = True
    md = ["### Functional check (apps:router)", ""]
    cols = [
        "GET plaintext",
        "GET json",
        "POST echo 4k",
        "GET large 1m",
        "GET stream 100",
        "pipelined x16",
    ]
    rows: list[tuple[str, dict[str, str]]] = []
    for name in names:
        res = check_server(name, PRESETS[name], out_dir)
        bad = {k: v for k, v in res.items() if v != "ok"}
        all_ok &= not bad
        log(
            f"[check] {name}: "
            + ("ok" if not bad else "; ".join(f"{k}: {v}" for k, v in bad.items()))
        )
        rows.append((name, res))
    md.append("| server | " + " | ".join(cols) + " |")
    md.append("|---" * (len(cols) + 1) + "|")
    for name, res in rows:
        if "start" in res:  # did not start: say so once
            cells = [res["start"][:200], *["-"] * (len(cols) - 1)]
        else:
            cells = [res.get(c, "-") for c in cols]
        md.append(f"| {name} | " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return all_ok, [*md, ""]


# --------------------------------------------------------------------------------------------
# Load (wrk, pinned to CLIENT_CPU)
# --------------------------------------------------------------------------------------------
def run_client(argv: Sequence[str], timeout: float) -> tuple[str, float]:
    """Runs the client pinned to CLIENT_CPU; returns (output, client CPU seconds).

    The CPU time comes from RUSAGE_CHILDREN around the wait: the only child reaped in that
    window is the client (servers are reaped later, in Server.stop)."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.Popen(
        ["taskset", "-c", CLIENT_CPU, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        out += b"\n[harness] client killed after timeout\n"
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return out.decode("utf-8", "replace"), cpu


_TO_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(token: str) -> float | None:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", token)
    return float(m.group(1)) * _TO_MS[m.group(2)] if m else None


def parse_wrk(out: str) -> dict[str, Any]:
    r: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}(?:\.0+)?%\s+(\S+)", out, re.M)
        r[f"p{q}_ms"] = _ms(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    return r


def wrk_argv(w: Workload, port: int, seconds: float, conns: int) -> list[str]:
    secs = max(1, round(seconds))  # wrk takes whole seconds
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency", "--timeout", "10s"]
    if w.lua:
        argv += ["-s", str(BENCH_DIR / "lua" / w.lua)]
    argv.append(f"http://{HOST}:{port}/")
    if w.lua_args:
        argv += ["--", *w.lua_args]
    return argv


def h2load_argv(w: Workload, port: int, seconds: float, conns: int) -> list[str]:
    secs = max(1, round(seconds))
    return [
        "h2load",
        "-t1",
        f"-c{conns}",
        f"-m{w.h2_streams}",
        f"-D{secs}",
        f"http://{HOST}:{port}/",
    ]


def parse_h2load(out: str) -> dict[str, Any]:
    """h2load's summary: requests done and failed, the rate; it reports no percentiles."""
    r: dict[str, Any] = {"p50_ms": None, "p99_ms": None}
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    r["rps"] = float(m.group(2)) if m else 0.0
    m = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    r["requests"] = int(m.group(1)) if m else 0
    r["errors"] = sum(int(x) for x in m.groups()[1:]) if m else 0
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    r["non2xx"] = sum(int(x) for x in m.groups()[1:]) if m else 0
    return r


def measure(
    name: str, preset: Preset, w: Workload, args: argparse.Namespace, out_dir: Path
) -> dict[str, Any]:
    if w.startup:
        return measure_startup(name, preset, w, out_dir)
    if w.ws_size:
        return measure_ws(name, preset, w, args, out_dir)
    argv_for, parse = (h2load_argv, parse_h2load) if w.h2_streams else (wrk_argv, parse_wrk)
    srv = Server(name, preset, w.app, out_dir).start()
    try:
        srv.wait_ready()
        conns = args.conns or w.conns
        if args.warmup > 0:
            run_client(argv_for(w, srv.port, args.warmup, conns), timeout=args.warmup + 30)
        pids = srv.snapshot_pids()
        cpu0 = cpu_seconds(pids)
        t0 = time.perf_counter()
        out, client_cpu = run_client(
            argv_for(w, srv.port, args.duration, conns), timeout=args.duration + 30
        )
        wall = time.perf_counter() - t0
        server_cpu = cpu_seconds(srv.snapshot_pids()) - cpu0
        res = parse(out)
        res["server_cpu_pct"] = round(100 * server_cpu / wall, 1)
        res["client_cpu_pct"] = round(100 * client_cpu / wall, 1)
        # requests per second of CPU the server actually got: steadier than req/s when other
        # work shares the machine
        res["per_cpu"] = round(res["requests"] / server_cpu, 1) if server_cpu > 0.01 else None
        res["rss_mib"] = round(srv.peak_rss_mib(), 1)
        res["nprocs"] = len(srv.pids)
        if w.lua == "pipeline.lua":  # wrk times only the first request of each batch
            res["p50_ms"] = res["p99_ms"] = None
        if not res["rps"]:
            res["error"] = out[-500:]
        return res
    finally:
        srv.stop()


def ws_client_argv(w: Workload, args: argparse.Namespace, port: int, pids: list[int]) -> list[str]:
    return [
        str(VBIN / "python"),
        str(BENCH_DIR / "ws_client.py"),
        f"--port={port}",
        f"--conns={args.conns or w.conns}",
        f"--size={w.ws_size}",
        f"--duration={args.duration:g}",
        f"--warmup={args.warmup:g}",
        "--server-pids=" + ",".join(map(str, pids)),
    ]


def measure_ws(
    name: str, preset: Preset, w: Workload, args: argparse.Namespace, out_dir: Path
) -> dict[str, Any]:
    """One WebSocket echo measurement: ws_client.py (pinned to CLIENT_CPU) warms up, then
    counts round trips and charges the server's CPU time over the same window itself."""
    extra = ["--ws", args.ws] if preset.ws_flag else []
    srv = Server(name, preset, w.app, out_dir, extra).start()
    try:
        srv.wait_ready()
        argv = ws_client_argv(w, args, srv.port, srv.snapshot_pids())
        out, _ = run_client(argv, timeout=args.warmup + args.duration + 60)
        try:
            got: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            got = {}
        res: dict[str, Any] = {"rps": got.get("msgs_per_s") or 0.0, "requests": got.get("msgs")}
        wall, server_cpu = got.get("wall_s") or 0.0, got.get("server_cpu_s") or 0.0
        res["p50_ms"], res["p99_ms"] = got.get("p50_ms"), got.get("p99_ms")
        res["errors"] = got.get("errors", 0)
        if wall > 0:
            res["server_cpu_pct"] = round(100 * server_cpu / wall, 1)
            res["client_cpu_pct"] = round(100 * (got.get("client_cpu_s") or 0.0) / wall, 1)
        res["per_cpu"] = round(res["requests"] / server_cpu, 1) if server_cpu > 0.01 else None
        res["rss_mib"] = round(srv.peak_rss_mib(), 1)
        res["nprocs"] = len(srv.pids)
        if not res["rps"] or res["errors"]:
            res["error"] = got.get("error") or out[-500:]
        return res
    finally:
        srv.stop()


def measure_startup(name: str, preset: Preset, w: Workload, out_dir: Path) -> dict[str, Any]:
    """STARTS_PER_ROUND starts, one after the other: ms from spawning the process (taskset, the
    interpreter, imports, binding) to the first 200 of `GET /`, polled every READY_POLL_S."""
    times: list[float] = []
    rss: list[float] = []
    for _ in range(STARTS_PER_ROUND):
        srv = Server(name, preset, w.app, out_dir).start()
        try:
            times.append(1000 * srv.wait_ready())
            rss.append(srv.peak_rss_mib())
        finally:
            srv.stop()
    return {
        "startup_ms": round(statistics.median(times), 1),
        "startup_min_ms": round(min(times), 1),
        "startup_max_ms": round(max(times), 1),
        "rss_mib": round(statistics.median(rss), 1),  # right after the first response
    }


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------
def median(vals: Iterable[float | None]) -> float | None:
    xs = [v for v in vals if v is not None]
    return statistics.median(xs) if xs else None


def fmt(v: float | None, nd: int = 0) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


Run = tuple[int, str, dict[str, Any]]  # (round, server, result)


def ratio(runs: list[Run], name: str, base: str, key: str) -> float | None:
    """Median over rounds of result[key] / baseline's result[key] in the same round."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for rnd, n, res in runs:
        by_round.setdefault(rnd, {})[n] = res
    ratios = []
    for d in by_round.values():
        a, b = d.get(name, {}).get(key), d.get(base, {}).get(key)
        if a and b:
            ratios.append(a / b)
    return median(ratios)


COLUMNS = [  # header ({unit}: req or msg, {client}: wrk or client), result key, decimals, ratio
    ("median {unit}/s", "rps", 0, True),
    ("{unit} per server-CPU-s", "per_cpu", 0, True),
    ("p99 ms", "p99_ms", 2, True),
    ("peak RSS MiB", "rss_mib", 1, True),
    ("server CPU %", "server_cpu_pct", 0, False),
    ("{client} CPU %", "client_cpu_pct", 0, False),
    ("errors", "errors", 0, False),
    ("non-2xx", "non2xx", 0, False),
]


def workload_table(
    title: str,
    runs: list[Run],
    names: Sequence[str],
    base: str,
    unit: str = "req",
    client: str = "wrk",
    notes: Sequence[str] = (),
) -> str:
    head = ["server"]
    for template, _, _, with_ratio in COLUMNS:
        label = template.format(unit=unit, client=client)
        head += [label, "vs base"] if with_ratio else [label]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name in names:
        results = [res for _, n, res in runs if n == name]
        cells = [name]
        for _, key, nd, with_ratio in COLUMNS:
            cells.append(fmt(median(r.get(key) for r in results), nd))
            if with_ratio:
                cells.append(fmt(ratio(runs, name, base, key), 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + table_notes(runs, notes)) + "\n"


def table_notes(runs: list[Run], notes: Sequence[str]) -> list[str]:
    errors = [
        f"error: {n} r{rnd + 1}: {res['error'][:200]!r}" for rnd, n, res in runs if "error" in res
    ]
    extra = [*notes, *errors]
    return ["", *(f"- {e}" for e in extra)] if extra else []


def startup_table(
    title: str, runs: list[Run], names: Sequence[str], base: str, notes: Sequence[str] = ()
) -> str:
    head = [
        "server",
        "median start-up ms",
        "vs base",
        "fastest ms",
        "slowest ms",
        "peak RSS MiB at the first 200",
        "vs base",
    ]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name in names:
        results = [res for _, n, res in runs if n == name]
        mins = [float(r["startup_min_ms"]) for r in results if "startup_min_ms" in r]
        maxs = [float(r["startup_max_ms"]) for r in results if "startup_max_ms" in r]
        cells = [
            name,
            fmt(median(r.get("startup_ms") for r in results), 1),
            fmt(ratio(runs, name, base, "startup_ms"), 2),
            fmt(min(mins) if mins else None, 1),
            fmt(max(maxs) if maxs else None, 1),
            fmt(median(r.get("rss_mib") for r in results), 1),
            fmt(ratio(runs, name, base, "rss_mib"), 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + table_notes(runs, notes)) + "\n"


@dataclass
class Plan:
    """Who runs one workload: presets in run order, the baseline, who stands for whom."""

    servers: list[str]
    base: str
    alias: dict[str, str]  # selected server -> the preset that runs for it here
    skipped: dict[str, str]  # selected server -> why it does not run here

    @property
    def notes(self) -> list[str]:
        return [f"{n} skipped: {why}" for n, why in self.skipped.items()]


def plan_workload(wname: str, names: Sequence[str], base: str) -> Plan:
    """Pure-Python workloads run each server as its `Preset.pure`; the h2 workload only the
    presets that serve HTTP/2. The baseline is the workload's own if it runs, else `base` (or
    whatever stands for it), else the first server."""
    w = WORKLOADS[wname]
    alias: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for n in names:
        why = w.accepts(PRESETS[n])
        if why:
            skipped[n] = why
            continue
        run = PRESETS[n].pure if w.pure_python else n
        if run not in alias.values():  # sleipnir and sleipnir-h11 both selected: run it once
            alias[n] = run
    servers = list(alias.values())
    w_base = w.baseline if w.baseline in servers else alias.get(base, base)
    if w_base not in servers and servers:
        w_base = servers[0]
    return Plan(servers, w_base, alias, skipped)


def summary_table(
    all_runs: dict[str, list[Run]], plans: dict[str, Plan], names: Sequence[str], base: str
) -> str:
    wl = [w for w in all_runs if not WORKLOADS[w].startup]
    ws = [w for w in wl if WORKLOADS[w].ws_size]
    other = [f"{w} to {plans[w].base}" for w in wl if plans[w].base != base]
    lines = [
        f"### Summary: ratio to {base}, req/s (req per server-CPU-s)"
        + (f"; messages, not requests, for {', '.join(ws)}" if ws else "")
        + (f"; {', '.join(other)}" if other else ""),
        "",
        "| server | " + " | ".join(wl) + " |",
        "|---" * (len(wl) + 1) + "|",
    ]
    for name in names:
        cells = []
        for w in wl:
            run, b = plans[w].alias.get(name, ""), plans[w].base
            if run:
                rps, per_cpu = (ratio(all_runs[w], run, b, k) for k in ("rps", "per_cpu"))
                cells.append(f"{fmt(rps, 2)} ({fmt(per_cpu, 2)})")
            else:  # n/a: cannot run it; empty: not selected for it (targets mode)
                cells.append("n/a" if name in plans[w].skipped else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Issue 6's targets (`bench/run targets`): each one is a workload's metric, as the median of
# the per-round ratios to the workload's baseline, against a threshold
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    what: str
    workload: str  # "": the worst (highest) ratio over the workloads measured against BASELINE
    key: str  # result key: rps, per_cpu, p99_ms, rss_mib, startup_ms
    threshold: float
    higher: bool = True  # holds when value >= threshold (else <=)
    absolute: bool = False  # the threshold is on the median itself (ms), not on a ratio


TARGETS = [
    Target("plaintext, 64 conns: req/s", "plaintext", "rps", 1.6),
    Target("plaintext, 64 conns: req per server-CPU-s", "plaintext", "per_cpu", 2.0),
    Target("plaintext, 64 conns: p99 latency", "plaintext", "p99_ms", 1.0, higher=False),
    Target("pipelined x16: req/s", "pipeline16", "rps", 4.0),
    Target("4 KiB POST echo: req/s", "echo-4k", "rps", 1.3),
    Target("1 MiB response: req/s", "large-1m", "rps", 1.2),
    Target("streaming 100 x 64 B chunks: req/s", "stream-100", "rps", 1.3),
    Target("WebSocket echo, 32 conns: msg/s", "ws-echo", "rps", 1.5),
    Target("HTTP/2, h2load -c16 -m16: req per server-CPU-s", "h2", "per_cpu", 5.0),
    Target("pure Python (h11 + asyncio) plaintext: req/s", "plaintext-h11", "rps", 1.5),
    Target("peak RSS (worst workload)", "", "rss_mib", 1.0, higher=False),
    Target("start-up: spawn to first 200, ms", "startup", "startup_ms", 200, False, True),
]
TARGET_SUBJECT = "sleipnir"
TARGET_PEERS = ("granian-1core", "hypercorn-uvloop")  # their columns in the TARGETS table
TARGET_SERVERS = ["sleipnir", BASELINE, "granian-1core", "hypercorn-uvloop"]
TARGET_ONLY = {"hypercorn-uvloop": {"h2"}}  # in targets mode, runs only in these workloads
# run order: start-up first (short, and it tells at once if a server is broken)
TARGET_WORKLOADS = [
    "startup",
    *dict.fromkeys(t.workload for t in TARGETS if t.workload not in ("", "startup")),
]
UNITS = {
    "rps": " {unit}/s",
    "per_cpu": " {unit}/server-CPU-s",
    "p99_ms": " ms",
    "rss_mib": " MiB",
    "startup_ms": " ms",
}


def evaluate_targets(
    all_runs: dict[str, list[Run]], plans: dict[str, Plan], base: str
) -> list[dict[str, Any]]:
    """One dict per target: each server's value (ratio, or ms for an absolute target), the
    medians behind sleipnir's, and whether it holds (None: not measured)."""
    rows: list[dict[str, Any]] = []
    servers = (TARGET_SUBJECT, *TARGET_PEERS)
    for t in TARGETS:
        row: dict[str, Any] = {
            "target": t.what,
            "workload": t.workload,
            "key": t.key,
            "threshold": t.threshold,
            "higher": t.higher,
            "absolute": t.absolute,
            "vs": None,
            "values": {},  # server -> ratio (ms if absolute); None: ran, no number
            "medians": {},  # sleipnir's and the baseline's medians of `key`
            "skipped": {},  # server -> why it cannot run this workload
            "runs_as": {},  # server -> the preset that ran for it, where another one did
            "holds": None,
        }
        if t.workload:
            wls = [t.workload] if t.workload in all_runs else []
        else:  # the worst over every workload both sides ran against BASELINE
            wls = [w for w in all_runs if plans[w].base == base and not WORKLOADS[w].startup]
        row["workloads"] = wls
        if not wls:
            rows.append(row)
            continue
        row["vs"] = plans[wls[0]].base
        row["unit"] = UNITS[t.key].format(unit=WORKLOADS[wls[0]].unit)
        worst: dict[str, str] = {}
        for n in servers:
            for w in wls:
                plan, runs = plans[w], all_runs[w]
                if n in plan.skipped:
                    row["skipped"][n] = plan.skipped[n]
                if n not in plan.alias:
                    continue
                run = plan.alias[n]
                if run != n:
                    row["runs_as"][n] = run
                if t.absolute:
                    v = median(res.get(t.key) for _, m, res in runs if m == run)
                else:
                    v = ratio(runs, run, plan.base, t.key)
                old = row["values"].get(n)
                if n not in row["values"] or (v is not None and (old is None or v > old)):
                    row["values"][n] = v
                    worst[n] = w
        w = worst.get(TARGET_SUBJECT, wls[0])
        row["worst_workload"] = w if not t.workload else None
        for n in (plans[w].alias.get(TARGET_SUBJECT, ""), plans[w].base):
            if n:
                row["medians"][n] = median(res.get(t.key) for _, m, res in all_runs[w] if m == n)
        v = row["values"].get(TARGET_SUBJECT)
        if v is not None:
            row["holds"] = v >= t.threshold if t.higher else v <= t.threshold
        rows.append(row)
    return rows


def targets_table(rows: list[dict[str, Any]], header: str) -> str:
    head = [
        "target",
        "vs",
        "threshold",
        TARGET_SUBJECT,
        *TARGET_PEERS,
        f"medians: {TARGET_SUBJECT} / vs",
        "result",
    ]
    lines = [f"### TARGETS {header}", "", "| " + " | ".join(head) + " |"]
    lines.append("|---" * len(head) + "|")
    notes: list[str] = []
    for row in rows:
        unit = row.get("unit", "")
        nd = 1 if row["key"] in ("p99_ms", "rss_mib") else 0
        op = ">=" if row["higher"] else "<="

        def cell(n: str, row: dict[str, Any] = row, unit: str = unit) -> str:
            if n in row["values"]:
                v = row["values"][n]
                return f"{fmt(v, 0)}{unit}" if row["absolute"] and v is not None else fmt(v, 2)
            return "n/a" if n in row["skipped"] else ""

        meds = [row["medians"][m] for m in row["medians"]]
        medians = " / ".join(fmt(m, nd) for m in meds) + unit if meds else ""
        if row.get("worst_workload"):
            medians += f" ({row['worst_workload']})"
        result = {True: "holds", False: "**misses**", None: "not measured"}[row["holds"]]
        thr = row["threshold"]
        threshold = f"{op} {thr:g}{unit}" if row["absolute"] else f"{op} {thr:.1f}"
        cells = [
            row["target"],
            row["vs"] or "-",
            threshold,
            *(cell(n) for n in (TARGET_SUBJECT, *TARGET_PEERS)),
            medians,
            result,
        ]
        lines.append("| " + " | ".join(cells) + " |")
        where = row["workload"] or "peak RSS"
        new = [f"{where}: {n} has {why}" for n, why in row["skipped"].items()]
        new += [f"{where}: {n} ran as {p}" for n, p in row["runs_as"].items()]
        notes += [n for n in new if n not in notes]
    notes += [
        "Ratios are medians of per-round ratios to the `vs` server (higher is better for "
        "req/s, msg/s and req per server-CPU-s; lower for p99 and RSS); start-up is the median "
        f"of {STARTS_PER_ROUND} starts per round, in ms, against the absolute limit.",
        "Peak RSS: the highest of each server's per-workload RSS ratios over the workloads "
        "measured against uvicorn (all but h2 and plaintext-h11; the workload is named).",
        "Empty cell: the server is not part of that workload (hypercorn runs only for h2).",
    ]
    return "\n".join([*lines, "", *(f"- {n}" for n in notes)]) + "\n"


# --------------------------------------------------------------------------------------------
def select_servers(args: argparse.Namespace) -> list[str]:
    for spec in args.server or []:
        name, sep, cmd = spec.partition("=")
        if not sep or not cmd:
            sys.exit(f"--server expects NAME='command template', got {spec!r}")
        base = PRESETS.get(name)
        needs = base.needs if base else frozenset({"base", "sleipnir", "peers"})
        # used as given in every workload, the pure-Python ones too
        PRESETS[name] = Preset(cmd, needs, "from --server", pure=name)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        sys.exit(f"unknown servers {unknown}; known: {', '.join(PRESETS)}")
    if args.aa:  # A/A control: a second copy of the baseline; its ratio is the noise floor
        src = args.baseline if args.baseline in names else names[0]
        pure = PRESETS[src].pure
        if pure:  # its pure-Python stand-in gets its own copy too
            PRESETS[pure + "-AA"] = replace(PRESETS[pure], pure=pure + "-AA")
        PRESETS[src + "-AA"] = replace(PRESETS[src], pure=pure and pure + "-AA")
        names.append(src + "-AA")
    return names


def check_cpus() -> None:
    allowed = os.sched_getaffinity(0)
    for var, cpu in (("BENCH_SERVER_CPU", SERVER_CPU), ("BENCH_CLIENT_CPU", CLIENT_CPU)):
        if not cpu.isdigit() or int(cpu) not in allowed:
            sys.exit(f"CPU {cpu!r} ({var}) is not available here (allowed: {sorted(allowed)})")
    if SERVER_CPU == CLIENT_CPU:
        log("[warn] server and client share one CPU: numbers measure contention")
    os.sched_setaffinity(0, {int(CLIENT_CPU)})  # keep the harness itself off the server's CPU


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "mode",
        nargs="?",
        default="http",
        choices=["http", "targets", "check", "setup", "list", "plot"],
    )
    ap.add_argument(
        "results_dir",
        nargs="?",
        type=Path,
        help="plot mode: the results folder of a targets run (default: the newest)",
    )
    ap.add_argument(
        "--servers",
        help="comma-separated presets, in run order (default: "
        f"{','.join(DEFAULT_SERVERS)}; targets mode: {','.join(TARGET_SERVERS)}; see `list`)",
    )
    ap.add_argument(
        "--server",
        action="append",
        metavar="NAME=TEMPLATE",
        help="add or override a preset, e.g. 'sleipnir={bin}/sleipnir {app} --host {host} "
        "--port {port} --http h11' (fields {bin} {app} {host} {port} {bench}); name it in "
        "--servers too; used as given (add --ws ... yourself for ws workloads)",
    )
    ap.add_argument("--baseline", default=BASELINE)
    ap.add_argument(
        "-w",
        "--workloads",
        help="comma-separated workloads (default: all but h2; targets mode: "
        f"{','.join(TARGET_WORKLOADS)}; h2 compares with hypercorn: "
        "-w h2 --servers sleipnir,hypercorn-uvloop)",
    )
    ap.add_argument("-d", "--duration", type=float, default=5.0, help="seconds of measured load")
    ap.add_argument("-r", "--rounds", type=int, default=3, help="rounds of A B (default 3)")
    ap.add_argument("-c", "--conns", type=int, default=0, help="override every workload's -c")
    ap.add_argument(
        "--ws",
        default="websockets",
        choices=WS_IMPLS,
        help="--ws given to the sleipnir and uvicorn presets in ws workloads (default %(default)s)",
    )
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load first")
    ap.add_argument("--aa", action="store_true", help="add a copy of the baseline (noise floor)")
    ap.add_argument("--no-check", action="store_true", help="skip the functional check")
    ap.add_argument("--no-setup", action="store_true", help="do not install anything")
    ap.add_argument(
        "--source",
        action="store_true",
        help="measure this checkout interpreted (editable install), not its compiled build",
    )
    ap.add_argument("--out", type=Path, help="results dir (default bench/results/<timestamp>)")
    ap.add_argument("--png", type=Path, help="targets and plot modes: where to write the plot")
    args = ap.parse_args(argv)
    if not 0 < args.duration <= 120 or args.rounds < 1:
        ap.error("need 0 < --duration <= 120 and --rounds >= 1")
    if args.results_dir and args.mode != "plot":
        ap.error(f"unexpected argument {args.results_dir} (a results folder is for `plot`)")
    targets = args.mode == "targets"
    args.servers = args.servers or ",".join(TARGET_SERVERS if targets else DEFAULT_SERVERS)
    default_wl = TARGET_WORKLOADS if targets else [w for w in WORKLOADS if w != "h2"]
    args.workloads = args.workloads or ",".join(default_wl)
    return args


def newest_targets_run() -> Path | None:
    """The newest folder in bench/results whose results.json has a TARGETS evaluation."""
    for path in sorted((BENCH_DIR / "results").glob("*/results.json"), reverse=True):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("targets"):
                return path.parent
    return None


def plot(results_dir: Path | None, png: Path | None, setup: bool) -> int:
    """Runs bench/plot.py with the bench venv's Python (matplotlib is installed there)."""
    results_dir = results_dir or newest_targets_run()
    if results_dir is None:
        log("[plot] no targets run in bench/results: run `bench/run targets` first")
        return 1
    if not (results_dir / "results.json").is_file():
        log(f"[plot] no results.json in {results_dir}")
        return 1
    if setup:
        ensure_venv({"plot"})
    argv = [str(VBIN / "python"), str(BENCH_DIR / "plot.py"), str(results_dir)]
    return subprocess.run([*argv, *(["-o", str(png)] if png else [])]).returncode


def describe(res: dict[str, Any], w: Workload) -> str:
    """The log line of one measurement."""
    if "error" in res:
        return f"ERROR {res['error'][:200]!r}"
    if w.startup:
        return (
            f"start-up {fmt(res.get('startup_ms'), 1)} ms (fastest {res.get('startup_min_ms')},"
            f" slowest {res.get('startup_max_ms')})  rss {res.get('rss_mib')} MiB"
        )
    return (
        f"{res['rps']:>10,.0f} {w.unit}/s  p99 {fmt(res.get('p99_ms'), 2)} ms"
        f"  cpu {res.get('server_cpu_pct')}%  rss {res.get('rss_mib')} MiB"
    )


def title_of(wname: str, args: argparse.Namespace, plan: Plan, base: str) -> str:
    w = WORKLOADS[wname]
    conns = args.conns or w.conns
    vs = f", ratios to {plan.base}" if plan.base != base else ""
    if w.startup:
        return (
            f"{wname}: {w.app}, {STARTS_PER_ROUND} starts per server per round, "
            f"GET / polled every {READY_POLL_S * 1000:g} ms{vs} ({w.what})"
        )
    if w.ws_size:
        return (
            f"{wname}: {w.app}, ws_client.py --conns {conns} --size {w.ws_size}"
            f" -d{args.duration:g}s, --ws {args.ws}{vs} ({w.what})"
        )
    if w.h2_streams:
        return (
            f"{wname}: {w.app}, h2load -t1 -c{conns} -m{w.h2_streams}"
            f" -D{round(args.duration)}{vs} ({w.what})"
        )
    lua = f", {w.lua} {' '.join(w.lua_args)}" if w.lua else ""
    return f"{wname}: {w.app}, wrk -t1 -c{conns} -d{round(args.duration)}s{lua}{vs} ({w.what})"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "list":
        for name, p in PRESETS.items():
            print(f"{name:26} {p.note}\n    {p.cmd}")
        print("\nworkloads:")
        for name, w in WORKLOADS.items():
            lua = f" -s lua/{w.lua} -- {' '.join(w.lua_args)}" if w.lua else ""
            load = f"wrk -c{w.conns}{lua}"
            if w.ws_size:
                load = f"ws_client.py --conns {w.conns} --size {w.ws_size}"
            elif w.h2_streams:
                load = f"h2load -c{w.conns} -m{w.h2_streams}"
            elif w.startup:
                load = f"no load, {STARTS_PER_ROUND} starts per round"
            if w.baseline:
                load += f", ratios to {w.baseline}"
            print(f"  {name:14} {w.app:16} {load}  ({w.what})")
        return 0
    if args.mode == "plot":
        return plot(args.results_dir, args.png, setup=not args.no_setup)
    targets = args.mode == "targets"
    names = select_servers(args)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        sys.exit(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    base = args.baseline if args.baseline in names else names[0]
    plans: dict[str, Plan] = {}
    for wname in workloads:
        w_names = names
        if targets:
            w_names = [n for n in names if wname in TARGET_ONLY.get(n.removesuffix("-AA"), {wname})]
        plans[wname] = plan_workload(wname, w_names, base)
    # every preset that runs somewhere, in the order selected (pure-Python stand-ins after)
    running = list(dict.fromkeys(n for p in plans.values() for n in p.servers))
    running.sort(key=lambda n: names.index(n) if n in names else len(names))
    if not args.no_setup:
        ensure_tools()
        needs = set().union(*(PRESETS[n].needs for n in running or names))
        ensure_venv(needs | ({"plot"} if targets else set()), args.source)
    vers = versions()
    if args.mode == "setup":
        print(json.dumps(vers, indent=1))
        return 0
    check_cpus()

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir: Path = args.out or BENCH_DIR / "results" / f"{stamp}-{args.mode}"
    out_dir.mkdir(parents=True, exist_ok=True)
    header = (
        f"commit {git_describe()}; D={args.duration:g}s warm-up={args.warmup:g}s R={args.rounds}; "
        f"server on CPU {SERVER_CPU}, wrk on CPU {CLIENT_CPU}; load average "
        f"{os.getloadavg()[0]:.2f} at start; {os.cpu_count()} CPUs"
    )
    md = [
        f"## sleipnir benchmark {stamp} ({args.mode})",
        "",
        header,
        "versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        "",
    ]
    record: dict[str, Any] = {
        "stamp": stamp,
        "mode": args.mode,
        "commit": git_describe(),
        "args": vars(args),
        "versions": vers,
        "plans": {w: vars(p) for w, p in plans.items()},
        "results": {},
    }

    def save() -> None:
        (out_dir / "results.json").write_text(json.dumps(record, indent=1, default=str))
        (out_dir / "results.md").write_text("\n".join(md) + "\n")

    all_runs: dict[str, list[Run]] = {}
    try:
        if args.mode == "check" or not args.no_check:
            ok, table = run_checks([n for n in running if not n.endswith("-AA")], out_dir)
            md += table
            record["check_ok"] = ok
            print("\n".join(table), flush=True)
            if not ok:
                log(f"[check] FAILED; server logs in {out_dir}")
                return 1
        if args.mode == "check":
            return 0
        if args.rounds < 3:
            log(f"[warn] {args.rounds} round(s): fine for a smoke run, too few to trust a ratio")
        n_load = sum(len(plans[w].servers) for w in workloads if not WORKLOADS[w].startup)
        est = args.rounds * n_load * (args.warmup + args.duration + 1.5)
        log(f"[{args.mode}] {n_load} measurements per round: about {est / 60:.0f} min of load")
        for wname in workloads:
            w, plan = WORKLOADS[wname], plans[wname]
            for note in plan.notes:
                log(f"[{wname}] {note}")
            runs: list[Run] = []
            for rnd in range(args.rounds):
                for name in plan.servers:  # the same order every round: A B, A B, ...
                    t0 = time.perf_counter()
                    try:
                        res = measure(name, PRESETS[name], w, args, out_dir)
                    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                        res = {"rps": 0.0, "error": str(e)[:500]}
                    runs.append((rnd, name, res))
                    log(
                        f"[{wname} r{rnd + 1}/{args.rounds}] {name:26} {describe(res, w)}"
                        f"  ({time.perf_counter() - t0:.1f}s)"
                    )
            all_runs[wname] = runs
            record["results"][wname] = [{"round": r, "server": n, **res} for r, n, res in runs]
            title = title_of(wname, args, plan, base)
            if w.startup:
                md.append(startup_table(title, runs, plan.servers, plan.base, plan.notes))
            else:
                md.append(
                    workload_table(
                        title, runs, plan.servers, plan.base, w.unit, w.client, plan.notes
                    )
                )
            print(md[-1], flush=True)
            save()
        if any(not WORKLOADS[w].startup for w in all_runs):
            md.append(summary_table(all_runs, plans, names, base))
            print(md[-1], flush=True)
        if targets:
            rows = evaluate_targets(all_runs, plans, base)
            record["targets"] = rows
            summary = targets_table(rows, f"(issue 6), {header}")
            md.insert(5, summary)  # first in results.md, last on stdout
            print(summary, flush=True)
    finally:
        kill_all_live()
        save()
        log(f"[done] {out_dir}/results.md and results.json (server logs beside them)")
    if targets and plot(out_dir, args.png, setup=False):
        log(f"[plot] failed: no targets.png (retry: bench/run plot {out_dir})")
    failed = [n for runs in all_runs.values() for _, n, res in runs if "error" in res]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
