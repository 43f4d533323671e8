"""A real Prometheus server for the tests, and promtool's linter for an exposition.

The tests do not trust a hand-written parser to say that deepdockd's metrics are right: they
let Debian's Prometheus (2.42) scrape the running daemon, with the bearer token the way an
operator would configure it, and ask it over its HTTP API what it stored. `promtool check
metrics` lints an exposition the way Prometheus' own tooling does.

Both binaries come from the `prometheus` package, which scripts/install-test-deps.sh installs.
When they are missing this module raises: a test that needs them fails, it never skips.

Only the standard library is used, so the harness needs nothing beyond the venv's test
packages.

Timing: the server is ready about 0.1 s after it starts, but the first scrape lands about 6 s
later: Prometheus 2.42 hands the configured targets to its scrapers on a fixed 5 s tick (no
flag changes it), then waits a per-target offset within the scrape interval. A test that
shares one server (a module- or session-scoped fixture) pays that once.

    with PrometheusServer(tmp_path, "127.0.0.1:41234", metrics_path="/metrics/prometheus",
                          bearer_token=token) as prom:
        series = prom.wait_for_series('deepdockd_up', lambda r: len(r) == 1)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

INSTALL_HINT = "run scripts/install-test-deps.sh as root (it installs Debian's prometheus package)"

# How long the server may take to answer /-/ready, and how long it gets to stop on SIGTERM.
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
# Attempts at a start that lost its port to another process between our probe and its bind.
START_ATTEMPTS = 3


class PrometheusError(RuntimeError):
    """The Prometheus server, its API or promtool did not do what the harness needed."""


def _binary(name: str) -> str:
    """The path of a binary of Debian's prometheus package, or a RuntimeError saying what to do."""
    path = shutil.which(name)
    if path is None:
        raise PrometheusError(f"`{name}` is not installed: {INSTALL_HINT}")
    return path


def _free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    The port is free when we close our probe socket; another process may still take it before
    Prometheus binds it, which PrometheusServer notices and retries.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _duration(seconds: float) -> str:
    """A Prometheus duration ("1500ms") for a number of seconds."""
    millis = round(seconds * 1000)
    if millis <= 0:
        raise ValueError(f"a Prometheus duration must be positive, not {seconds} s")
    return f"{millis}ms"


def _tail(path: Path, max_chars: int = 4000) -> str:
    """The end of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(could not read {path}: {e})"
    return text[-max_chars:] if text else "(empty)"


# urllib honours http_proxy and friends from the environment; a proxy has no business between
# the test and a server on loopback, so the harness uses an opener without any.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PrometheusServer:
    """A private Prometheus that scrapes one target, as a context manager.

    On enter it writes tmp_dir/prometheus.yml with a single scrape job "deepdockd" that reads
    `metrics_path` from `target` ("127.0.0.1:41234") every `scrape_interval_s`, authenticating
    with `Authorization: Bearer <bearer_token>`. The token goes in a mode-0600 file that the
    configuration names (credentials_file), never on a command line. Prometheus listens on a
    free loopback port, keeps its TSDB in tmp_dir/data and logs to tmp_dir/prometheus.log; enter
    returns once /-/ready answers 200. On exit it gets SIGTERM, then SIGKILL after 10 s.
    """

    def __init__(
        self,
        tmp_dir: Path,
        target: str,
        *,
        metrics_path: str,
        bearer_token: str,
        scrape_interval_s: float = 1.0,
    ) -> None:
        self._prometheus = _binary("prometheus")
        self.tmp_dir = tmp_dir
        self.target = target
        self.metrics_path = metrics_path
        self.scrape_interval_s = scrape_interval_s
        self._bearer_token = bearer_token
        self.config_path = tmp_dir / "prometheus.yml"
        self.token_path = tmp_dir / "prometheus-token"
        self.data_dir = tmp_dir / "data"
        self.log_path = tmp_dir / "prometheus.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # --- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> PrometheusServer:
        self._write_config()
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()
        self.port = 0  # A query after the `with` says so instead of "connection refused".

    @property
    def url(self) -> str:
        """The server's base URL, http://127.0.0.1:<port>."""
        if not self.port:
            raise PrometheusError("the Prometheus server is not started: use it in a `with`")
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # The token file is created 0600 from the start (no window where it is readable), and
        # anew each time, so a stale token from an earlier server is never reused.
        self.token_path.unlink(missing_ok=True)
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as token_file:
            token_file.write(self._bearer_token)
        interval = _duration(self.scrape_interval_s)
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": "deepdockd",
                    "scrape_interval": interval,
                    # The timeout may not exceed the interval; a scrape of a daemon on loopback
                    # that needs the whole interval is a failure anyway.
                    "scrape_timeout": interval,
                    "metrics_path": self.metrics_path,
                    "scheme": "http",
                    "authorization": {
                        "type": "Bearer",
                        "credentials_file": str(self.token_path),
                    },
                    "static_configs": [{"targets": [self.target]}],
                }
            ],
        }
        # YAML is a superset of JSON: JSON needs no YAML library and quotes every string safely.
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def _command(self) -> list[str]:
        return [
            self._prometheus,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Info is a few lines a start, and the log is a file the errors quote.
            "--log.level=info",
        ]

    def _start(self) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = _free_loopback_port()
            self._log = self.log_path.open("ab")
            self._log.write(f"--- harness: start attempt {attempt}, port {self.port}\n".encode())
            self._log.flush()
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp_dir,
            )
            if self._wait_ready():
                return
            # It exited. Lost the port race: try another port; anything else is an error.
            self._stop()
            log = _tail(self.log_path)
            if "address already in use" not in log or attempt == START_ATTEMPTS:
                raise PrometheusError(
                    f"prometheus exited before it was ready ({self.log_path}):\n{log}"
                )

    def _wait_ready(self) -> bool:
        """True once /-/ready answers 200; False if the process exits; raises on a timeout."""
        assert self._process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with _OPENER.open(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass  # Not listening yet, or 503 while the TSDB opens.
            time.sleep(0.1)
        raise PrometheusError(
            f"prometheus was not ready after {READY_TIMEOUT_S:.0f} s ({self.log_path}):\n"
            f"{_tail(self.log_path)}"
        )

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log, self._log = self._log, None
        if log is not None:
            log.close()

    # --- HTTP API ---------------------------------------------------------------------------

    def _api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET /api/v1/<path> and return its "data"; raise with the body unless "success"."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with _OPENER.open(url, timeout=10) as response:
                body = response.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            # A bad expression answers 400 with {"status": "error", "error": ...} in the body.
            body = e.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as e:
            raise PrometheusError(
                f"GET {url} failed: {e}; prometheus log ({self.log_path}):\n{_tail(self.log_path)}"
            ) from e
        try:
            answer = json.loads(body)
        except json.JSONDecodeError as e:
            raise PrometheusError(f"GET {url}: not JSON: {body[:2000]}") from e
        if not isinstance(answer, dict) or answer.get("status") != "success":
            raise PrometheusError(f"GET {url}: {body[:2000]}")
        return answer.get("data")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of a PromQL expression, evaluated now.

        Each element is {"metric": {label: value, ...}, "value": [unix_ts, "value as string"]};
        the metric name is the label "__name__". An expression that is not an instant vector
        (a scalar, a string) is an error: wrap it in vector(...).
        """
        data = self._api("query", {"query": expr})
        if not isinstance(data, dict) or data.get("resultType") != "vector":
            raise PrometheusError(f"query {expr!r} is not an instant vector: {data!r}")
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets: each has "health" ("up", "down", "unknown"), "lastError",
        "lastScrape", "scrapeUrl", "labels" and more, as /api/v1/targets answers."""
        data = self._api("targets", {"state": "active"})
        active: list[dict[str, Any]] = data["activeTargets"]
        return active

    def wait_for_series(
        self,
        expr: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout_s: float = 20,
    ) -> list[dict[str, Any]]:
        """Poll query(expr) every 0.25 s until predicate(result) holds, and return that result.

        The default predicate waits for a non-empty result. On a timeout it raises an
        AssertionError with the last result and the health and last error of each target
        (a 401, a refused connection, a parse error of the exposition).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        raise AssertionError(
            f"Prometheus: {expr!r} did not match within {timeout_s:g} s.\n"
            f"last result: {json.dumps(result)}\n"
            f"targets:\n{self._describe_targets()}"
        )

    def _describe_targets(self) -> str:
        try:
            targets = self.targets()
        except PrometheusError as e:
            return f"  (could not list the targets: {e})"
        if not targets:
            # Prometheus 2.42 passes its targets to the scrapers only ~5 s after it starts.
            return "  (none yet: Prometheus activates its targets about 5 s after it starts)"
        return "\n".join(
            f"  {t.get('scrapeUrl')}: health={t.get('health')!r}"
            f" lastError={t.get('lastError')!r} lastScrape={t.get('lastScrape')}"
            f" lastScrapeDuration={t.get('lastScrapeDuration')}"
            for t in targets
        )


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    """Lint an exposition with `promtool check metrics`, which reads it on stdin.

    The caller asserts returncode == 0. promtool prints each lint problem ("x no help text",
    'x counter metrics should have "_total" suffix') and exits 3; it exits 1 when the text
    does not parse. Look at both stdout and stderr: the problems go to stderr.
    """
    promtool = _binary("promtool")
    return subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
