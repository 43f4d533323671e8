"""Run deepdockd as a real process, the way a person or systemd starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any DEEPDOCKD_ setting the caller may have set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPDOCKD_")}
    env.update(extra or {})
    return env


def run_deepdockd(
    *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run the command to completion (for starts that must fail)."""
    return subprocess.run(
        [sys.executable, "-m", "deepdockd", *args],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def http_get(url: str, timeout_s: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Daemon:
    """A deepdockd process started in the background; ``stop()`` sends SIGTERM and returns
    its exit status and everything it logged. Auth is off unless ``auth`` (tests of other
    things than auth need no token)."""

    def __init__(
        self, *args: str, env: Mapping[str, str] | None = None, log: Path, auth: bool = False
    ) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deepdockd", *args],
            env=clean_env({"DEEPDOCKD_AUTH": str(auth).lower(), **(env or {})}),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_until_serving(self, url: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"deepdockd exited early:\n{self.log.read_text()}")
            try:
                http_get(url, timeout_s=1)
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"deepdockd did not serve {url} within {timeout_s} s")

    def wait_for_exit(self, timeout_s: float = 20) -> tuple[int, str]:
        """For a daemon that must stop by itself."""
        status = self.process.wait(timeout_s)
        self._log_file.close()
        return status, self.log.read_text()

    def stop(self, timeout_s: float = 20) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self._log_file.close()
        return status, self.log.read_text()
