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
    check    functional check only: one GET / POST of each kind per server, no load
    setup    install wrk and the bench venv, print versions
    list     server presets and workloads

The harness needs only the standard library. It installs what it runs: wrk via apt if missing,
and a venv ($BENCH_WORK/venv) with the pinned requirements.txt and sleipnir from this checkout
(editable, so the working tree is what gets measured). See README.md in this folder.
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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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


PRESETS: dict[str, Preset] = {
    "sleipnir": Preset(
        "{bin}/sleipnir " + COMMON + " --http httptools --loop uvloop",
        frozenset({"base", "sleipnir"}),
        "this checkout, httptools + uvloop",
        ws_flag=True,
        h2=True,
    ),
    "uvicorn-httptools-uvloop": Preset(
        "{bin}/uvicorn " + COMMON + " --http httptools --loop uvloop",
        note="baseline",
        ws_flag=True,
    ),
    "sleipnir-h11": Preset(
        "{bin}/sleipnir " + COMMON + " --http h11 --loop asyncio",
        frozenset({"base", "sleipnir"}),
        "pure-Python parser and loop",
        ws_flag=True,
    ),
    "uvicorn-h11-asyncio": Preset(
        "{bin}/uvicorn " + COMMON + " --http h11 --loop asyncio", ws_flag=True
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
    "sleipnir": ["-e", f"{REPO}[standard]", "-c", str(BENCH_DIR / "requirements.txt")],
}
STAMP_INPUTS = {
    "base": [BENCH_DIR / "requirements.txt"],
    "peers": [BENCH_DIR / "requirements-peers.txt"],
    "sleipnir": [REPO / "pyproject.toml"],
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

    @property
    def unit(self) -> str:
        return "msg" if self.ws_size else "req"

    @property
    def client(self) -> str:
        return "client" if self.ws_size else "h2load" if self.h2_streams else "wrk"


WORKLOADS: dict[str, Workload] = {
    "plaintext": Workload("apps:plaintext", 64, "GET, 13-byte text/plain"),
    "json": Workload("apps:json", 64, "GET, json.dumps per request (28 bytes)"),
    "echo-4k": Workload("apps:echo", 64, "POST 4 KiB, body echoed back", "post.lua", ("4096",)),
    "large-1m": Workload("apps:large", 16, "GET, 1 MiB response"),
    "pipeline16": Workload(
        "apps:plaintext", 64, "plaintext, 16 requests per write", "pipeline.lua", ("16",)
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
}
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


def stamp_of(key: str) -> str:
    h = hashlib.sha256(key.encode())
    for path in STAMP_INPUTS[key]:
        h.update(path.read_bytes())
    return h.hexdigest()


def ensure_venv(needs: Iterable[str]) -> None:
    """Create the venv and (re)install each needed requirement set whose inputs changed."""
    py = VBIN / "python"
    if not py.exists():
        base = base_python()
        log(f"[setup] creating {VENV} with {base}")
        VENV.parent.mkdir(parents=True, exist_ok=True)
        run_checked([base, "-m", "venv", str(VENV)])
        pip(["--upgrade", "pip"])
    for key in sorted(needs, key=list(REQUIREMENT_FILES).index):
        stamp_file = VENV / f".bench-installed-{key}"
        want = stamp_of(key)
        if stamp_file.exists() and stamp_file.read_text() == want:
            continue
        log(f"[setup] pip installing {key} into {VENV}")
        pip(REQUIREMENT_FILES[key])
        stamp_file.write_text(want)


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
        for var in ("WEB_CONCURRENCY", "COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG"):
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
            time.sleep(0.01)
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
    cols = ["GET plaintext", "GET json", "POST echo 4k", "GET large 1m", "pipelined x16"]
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
    errors = [f"{n} r{rnd + 1}: {res['error'][:200]!r}" for rnd, n, res in runs if "error" in res]
    lines += ["", *(f"- error: {e}" for e in errors)] if errors else []
    return "\n".join(lines) + "\n"


def summary_table(all_runs: dict[str, list[Run]], names: Sequence[str], base: str) -> str:
    wl = list(all_runs)
    ws = [w for w in wl if WORKLOADS[w].ws_size]
    bases = {}
    for w in wl:
        ran = {n for _, n, _ in all_runs[w]}
        bases[w] = WORKLOADS[w].baseline if WORKLOADS[w].baseline in ran else base
    other = [f"{w} to {b}" for w, b in bases.items() if b != base]
    lines = [
        f"### Summary: ratio to {base}, req/s (req per server-CPU-s)"
        + (f"; messages, not requests, for {', '.join(ws)}" if ws else "")
        + (f"; {', '.join(other)}" if other else ""),
        "",
        "| server | " + " | ".join(wl) + " |",
        "|---" * (len(wl) + 1) + "|",
    ]
    for name in names:
        cells = [
            f"{fmt(ratio(all_runs[w], name, bases[w], 'rps'), 2)} "
            f"({fmt(ratio(all_runs[w], name, bases[w], 'per_cpu'), 2)})"
            for w in wl
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
def select_servers(args: argparse.Namespace) -> list[str]:
    for spec in args.server or []:
        name, sep, cmd = spec.partition("=")
        if not sep or not cmd:
            sys.exit(f"--server expects NAME='command template', got {spec!r}")
        base = PRESETS.get(name)
        needs = base.needs if base else frozenset({"base", "sleipnir", "peers"})
        PRESETS[name] = Preset(cmd, needs, "from --server")
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        sys.exit(f"unknown servers {unknown}; known: {', '.join(PRESETS)}")
    if args.aa:  # A/A control: a second copy of the baseline; its ratio is the noise floor
        src = args.baseline if args.baseline in names else names[0]
        PRESETS[src + "-AA"] = PRESETS[src]
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
    ap.add_argument("mode", nargs="?", default="http", choices=["http", "check", "setup", "list"])
    ap.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help="comma-separated presets, in run order (default: %(default)s; see `list`)",
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
        default=",".join(w for w in WORKLOADS if w != "h2"),
        help="comma-separated workloads (default: %(default)s; h2 compares with hypercorn: "
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
    ap.add_argument("--out", type=Path, help="results dir (default bench/results/<timestamp>)")
    args = ap.parse_args(argv)
    if not 0 < args.duration <= 120 or args.rounds < 1:
        ap.error("need 0 < --duration <= 120 and --rounds >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "list":
        for name, p in PRESETS.items():
            print(f"{name:26} {p.note}\n    {p.cmd}")
        print("\nworkloads:")
        for name, w in WORKLOADS.items():
            lua = f" -s lua/{w.lua} -- {' '.join(w.lua_args)}" if w.lua else ""
            load = f"ws_client.py --conns {w.conns} --size {w.ws_size}" if w.ws_size else ""
            load = load or f"wrk -c{w.conns}{lua}"
            print(f"  {name:12} {w.app:16} {load}  ({w.what})")
        return 0
    names = select_servers(args)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        sys.exit(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    if not args.no_setup:
        ensure_tools()
        ensure_venv(set().union(*(PRESETS[n].needs for n in names)))
    vers = versions()
    if args.mode == "setup":
        print(json.dumps(vers, indent=1))
        return 0
    check_cpus()

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir: Path = args.out or BENCH_DIR / "results" / f"{stamp}-{args.mode}"
    out_dir.mkdir(parents=True, exist_ok=True)
    base = args.baseline if args.baseline in names else names[0]
    md = [
        f"## sleipnir benchmark {stamp} ({args.mode})",
        "",
        f"commit {git_describe()}; D={args.duration:g}s warm-up={args.warmup:g}s R={args.rounds}; "
        f"server on CPU {SERVER_CPU}, wrk on CPU {CLIENT_CPU}; load average "
        f"{os.getloadavg()[0]:.2f} at start; {os.cpu_count()} CPUs",
        "versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        "",
    ]
    record: dict[str, Any] = {"stamp": stamp, "args": vars(args), "versions": vers, "results": {}}

    def save() -> None:
        (out_dir / "results.json").write_text(json.dumps(record, indent=1, default=str))
        (out_dir / "results.md").write_text("\n".join(md) + "\n")

    all_runs: dict[str, list[Run]] = {}
    try:
        if args.mode == "check" or not args.no_check:
            ok, table = run_checks([n for n in names if not n.endswith("-AA")], out_dir)
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
        for wname in workloads:
            w = WORKLOADS[wname]
            w_names = [n for n in names if PRESETS[n].h2 or not w.h2_streams]
            w_base = w.baseline if w.baseline in w_names else base
            skipped = [n for n in names if n not in w_names]
            if skipped:
                log(f"[{wname}] skipping {', '.join(skipped)}: no HTTP/2")
            runs: list[Run] = []
            for rnd in range(args.rounds):
                for name in w_names:  # the same order every round: A B, A B, ...
                    t0 = time.perf_counter()
                    try:
                        res = measure(name, PRESETS[name], w, args, out_dir)
                    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                        res = {"rps": 0.0, "error": str(e)[:500]}
                    runs.append((rnd, name, res))
                    log(
                        f"[{wname} r{rnd + 1}/{args.rounds}] {name:26} {res['rps']:>10,.0f} "
                        f"{w.unit}/s"
                        f"  p99 {fmt(res.get('p99_ms'), 2)} ms  cpu {res.get('server_cpu_pct')}%"
                        f"  rss {res.get('rss_mib')} MiB  ({time.perf_counter() - t0:.1f}s)"
                        + (f"  ERROR {res['error'][:200]!r}" if "error" in res else "")
                    )
            all_runs[wname] = runs
            record["results"][wname] = [{"round": r, "server": n, **res} for r, n, res in runs]
            conns = args.conns or w.conns
            lua = f", {w.lua} {' '.join(w.lua_args)}" if w.lua else ""
            title = f"{wname}: {w.app}, wrk -t1 -c{conns} -d{round(args.duration)}s{lua} ({w.what})"
            if w.ws_size:
                title = (
                    f"{wname}: {w.app}, ws_client.py --conns {conns} --size {w.ws_size}"
                    f" -d{args.duration:g}s, --ws {args.ws} ({w.what})"
                )
            elif w.h2_streams:
                title = (
                    f"{wname}: {w.app}, h2load -t1 -c{conns} -m{w.h2_streams}"
                    f" -D{round(args.duration)}, ratios to {w_base} ({w.what})"
                )
            md.append(workload_table(title, runs, w_names, w_base, w.unit, w.client))
            print(md[-1], flush=True)
            save()
        md.append(summary_table(all_runs, names, base))
        print(md[-1], flush=True)
    finally:
        kill_all_live()
        save()
        log(f"[done] {out_dir}/results.md and results.json (server logs beside them)")
    failed = [n for runs in all_runs.values() for _, n, res in runs if "error" in res]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
