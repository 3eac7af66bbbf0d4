"""Rolling restarts of a multi-process sleipnir behind nginx, under load (acceptance 2).

wrk -> nginx (127.0.0.1, keep-alive to the upstream) -> ``sleipnir --workers 2``; two SIGHUP
rolling restarts during the load; wrk must then report no socket error and no error status.
wrk runs for $SLEIPNIR_ROLLING_SECONDS (default 8), like the direct test in
tests/test_supervisor_e2e.py.

What this relies on from nginx, all of it nginx's documented defaults (the config is
``procs.nginx_config``; nothing in it changes the retry behaviour):

* Upstream keep-alive (``keepalive 16`` with ``proxy_http_version 1.1`` and an empty
  ``Connection`` header) reuses idle connections to sleipnir. A worker that stops closes its
  idle keep-alive connections; nginx may already have written the next request on one of them.
* ``proxy_next_upstream error timeout`` (the default) then passes the request to the upstream
  again, on another connection, as long as nothing of the response was sent to the client and
  the method is idempotent (GET here; nginx >= 1.9.13 never retries a POST that way). A failed
  *cached* keep-alive connection does not use up one of the upstream's tries, so this works with
  a single ``server`` line. ``proxy_next_upstream_tries`` / ``_timeout`` keep their defaults (0:
  no limit).
* Nothing else is retried or masked: a refused connection (a fresh one, not a cached one) or
  a 5xx from sleipnir reaches wrk as 502 / 5xx, and a response cut off after its head reached
  the client breaks wrk's read. But a worker that dies after reading a request and before
  answering it (connection reset while nginx reads the response header) is retried too, for a
  GET: nginx's error log shows it, wrk does not. tests/test_supervisor_e2e.py runs wrk against
  sleipnir directly, where no such retry exists; this test is about the two working together.

The upstream errors nginx logged (and retried) are printed from its error log, for the record
(none in our runs: sleipnir lets nginx's keep-alive connections go without a race).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from procs import NGINX, WRK, nginx, rolling_restart, supervisor, wait_serving, wrk_running

APP = "tests.apps.workers:app"
SECONDS = float(os.environ.get("SLEIPNIR_ROLLING_SECONDS", "8"))

pytestmark = [
    pytest.mark.skipif(
        not os.access(NGINX, os.X_OK),
        reason=f"{NGINX} is missing (scripts/test installs the Debian package nginx)",
    ),
    pytest.mark.skipif(
        WRK is None, reason="wrk is not installed (scripts/test installs the Debian package wrk)"
    ),
]


@pytest.mark.timeout(SECONDS + 60)
def test_rolling_restarts_behind_nginx(tmp_path: Path) -> None:
    with supervisor(APP, "--no-access-log", workers=2) as sup, nginx(tmp_path, sup.port) as proxy:
        first = sup.workers()
        with wrk_running(f"{proxy.url}/", seconds=SECONDS, connections=32) as wrk:
            wait_serving(first)
            restarts = [rolling_restart(sup, SECONDS), rolling_restart(sup, SECONDS)]
            assert wrk.running, (
                f"both rolling restarts must happen while wrk runs; they took longer than "
                f"{SECONDS}s (raise SLEIPNIR_ROLLING_SECONDS)"
            )
            result = wrk.result()
        retried = re.findall(r"upstream .*", proxy.output)
        print(
            f"wrk via nginx: {result.summary()}; nginx upstream errors: {len(retried)}; "
            f"restarts took {', '.join(f'{r.seconds:.2f}s' for r in restarts)}"
        )
        for line in retried[:5]:
            print(f"  nginx: {line}")
        new = {pid for restart in restarts for pid in restart.new}
        assert len(new) >= 4 and not new & set(first), (first, new)
        for restart in restarts:
            assert restart.min_capacity() >= 2, restart.lines
        assert result.requests > 0, result.output
        assert result.socket_errors == 0, result.output
        assert result.non_2xx_3xx == 0, f"{result.output}\nnginx:\n{proxy.output[-3000:]}"
