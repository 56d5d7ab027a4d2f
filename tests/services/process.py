"""Running a real server as a child process for the test session.

Every service binds to 127.0.0.1 on a free port, logs to a file under the session's
temporary directory, and is checked before each test that uses it: a service that died
mid-suite fails that test with its name, exit code and last log lines.

Under CI=true a service that cannot be started fails the run; it is never a skip. On a
developer's machine without the binaries, the tests that need them skip and say which
install step is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("OBSERVER_CACHE", Path.home() / ".cache" / "observer"))
INSTALL_HINT = "run tools/install-services.sh (make test does)"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(service: str, reason: str) -> None:
    """A service the test needs is not there: a failure in CI, a skip elsewhere."""
    if in_ci():
        pytest.fail(f"{service} is unavailable: {reason}", pytrace=False)
    pytest.skip(f"{service} is unavailable ({INSTALL_HINT}): {reason}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


class ServiceProcess:
    """A named child process with a log file; `ensure_running` guards every use of it."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log_path = self.log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,  # our signals, not the terminal's
            )

    def wait_ready(self, is_ready: Callable[[], bool], timeout: float) -> None:
        """Wait for `is_ready`, failing (CI) or skipping with the reason if it never comes."""
        if (
            wait_until(lambda: self.exited() or is_ready(), timeout, interval=0.2)
            and not self.exited()
        ):
            return
        reason = (
            f"exited with code {self.process.returncode if self.process else '?'}"
            if self.exited()
            else f"not ready after {timeout:.0f}s"
        )
        self.stop()
        unavailable(self.name, f"{reason}; last log lines:\n{self.log_tail()}")

    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def ensure_running(self) -> None:
        """Fail the test now, naming the service, if it is no longer running."""
        if self.exited():
            code = self.process.returncode if self.process else None
            pytest.fail(
                f"{self.name} stopped during the test session (exit code {code}); "
                f"last log lines:\n{self.log_tail()}",
                pytrace=False,
            )

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def require_binary(service: str, path: Path | str) -> Path:
    """The path of an installed binary, or unavailable(service) saying what is missing."""
    found = shutil.which(path)
    if found is None:
        unavailable(service, f"{path} is not installed")
    return Path(str(found))
