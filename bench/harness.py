"""What every benchmark here shares: the peer binary, measured processes, machine facts.

Measurements are taken from the kernel, not the wall clock: a process is started with
`subprocess.Popen` and reaped with `os.wait4`, whose rusage gives its user and system CPU
time and its peak resident set (ru_maxrss, KiB on Linux). The wall-clock figures use
`time.monotonic`; this machine's clock can jump when it is restored between commands, so
a wall figure that disagrees with the CPU figures is re-run rather than trusted.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OTELCOL_VERSION = os.environ.get("OTELCOL_VERSION", "0.156.0")


def otelcol_binary() -> Path:
    """The benchmark's OpenTelemetry Collector, built once by bench/otelcol/build.sh."""
    env = {**os.environ, "OTELCOL_VERSION": OTELCOL_VERSION}
    out = subprocess.run(
        [str(BENCH / "otelcol" / "build.sh")], env=env, check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def observer_command() -> list[str]:
    """The `observer` console script of the interpreter running the benchmark (the venv's)."""
    script = Path(sys.executable).with_name("observer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "observer"]


def observer_env(source: Path = REPO) -> dict[str, str]:
    """The environment that makes `observer` the code under `source` (this working tree, or
    a snapshot of it), whatever the venv's editable install points at: PYTHONPATH comes
    before site-packages."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(source) + (os.pathsep + path if path else "")}


def snapshot_observer(destination: Path) -> Path:
    """Copy observer/ as it is now into `destination`, and return the directory to put on
    PYTHONPATH. Others edit this working tree while a benchmark runs; every run of one
    benchmark must measure the same code."""
    shutil.copytree(
        REPO / "observer", destination / "observer", ignore=shutil.ignore_patterns("__pycache__")
    )
    return destination


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Measured:
    """One process run to its end: what the kernel accounted to it."""

    argv: list[str]
    wall_s: float
    """Start to exit (or to `done_s` for a server that does not exit by itself)."""
    user_s: float
    sys_s: float
    max_rss_mb: float
    returncode: int
    done_s: float | None = None
    """For servers: when the work was seen complete; the rest until exit was idle."""
    cpu_at_done_s: float | None = None
    """For servers: CPU used (user + system, from /proc) when the work was seen complete."""
    idle_s: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def _reap(process: subprocess.Popen[bytes], started: float, argv: list[str]) -> Measured:
    _, status, usage = os.wait4(process.pid, 0)
    ended = time.monotonic()
    process.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        argv=argv,
        wall_s=ended - started,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        max_rss_mb=usage.ru_maxrss / 1024,
        returncode=process.returncode,
    )


def run_to_end(argv: list[str], log: Path, timeout_s: float = 3600, **popen: object) -> Measured:
    """Run a command that exits when its work is done (`observer agent --once`)."""
    with log.open("wb") as out:
        started = time.monotonic()
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **popen)  # type: ignore[call-overload]
        deadline = started + timeout_s
        while not _exited(process):
            if time.monotonic() > deadline:
                process.kill()
                break
            time.sleep(0.02)
        return _reap(process, started, argv)


def run_until(
    argv: list[str],
    log: Path,
    done: Callable[[], bool],
    timeout_s: float = 3600,
    poll_s: float = 0.25,
    started: Callable[[int], None] | None = None,
    **popen: object,
) -> Measured:
    """Run a server until `done()` says its work is complete, then SIGTERM it and reap it.

    The wall figure ends when `done()` first returned true; the time from then to exit
    (at most one poll plus the server's shutdown) is reported as idle, and its CPU, which
    is small, stays in the total: nothing is subtracted. `started` gets the server's pid
    (for `process_cpu_s`); `cpu_at_done_s` is its CPU when `done()` first returned true.
    """
    with log.open("wb") as out:
        began = time.monotonic()
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **popen)  # type: ignore[call-overload]
        if started is not None:
            started(process.pid)
        finished_at = cpu_at_done = None
        peak_rss_mb = 0.0
        try:
            while time.monotonic() - began < timeout_s:
                if _exited(process):
                    break
                if done():
                    finished_at = time.monotonic()
                    cpu_at_done = process_cpu_s(process.pid)
                    peak_rss_mb = process_peak_rss_mb(process.pid)
                    break
                time.sleep(poll_s)
        finally:
            if not _exited(process):
                process.send_signal(signal.SIGTERM)
        measured = _reap(process, began, argv)
    if finished_at is None:
        raise RuntimeError(f"{argv[0]} did not finish its work (see {log})")
    measured.done_s = finished_at - began
    measured.cpu_at_done_s = cpu_at_done
    # wait4's ru_maxrss of a child that Python started by vfork + exec is at least the
    # parent's peak (the kernel keeps the pre-exec high-water mark), so a large driver
    # inflated it; the server's own high-water mark when its work was done is read instead.
    measured.max_rss_mb = peak_rss_mb
    measured.idle_s = measured.wall_s - measured.done_s
    measured.wall_s = measured.done_s
    return measured


def process_cpu_s(pid: int) -> float:
    """CPU (user + system, every thread) a live process has used so far, from /proc."""
    # Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_peak_rss_mb(pid: int) -> float:
    """A live process's peak resident set size (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmHWM for process {pid}")


def _exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the child has exited, without reaping it (wait4 must get its rusage)."""
    info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None


def prometheus_value(url: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The sum of a metric's samples on a Prometheus text endpoint (with or without `_total`)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our http URL)
            text = response.read().decode()
    except OSError:
        return None
    total = None
    pattern = re.compile(rf"^{re.escape(name)}(?:_total)?(\{{[^}}]*\}})?\s+(\S+)$", re.M)
    for match in pattern.finditer(text):
        if labels and not all(f'{k}="{v}"' in (match[1] or "") for k, v in labels.items()):
            continue
        total = (total or 0.0) + float(match[2])
    return total


def machine_facts(otelcol: Path | None = None, source: Path = REPO) -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts = {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": _meminfo_total(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "go": _output(["go", "version"]),
        "observer": _observer_revision(source),
    }
    if otelcol is not None:
        facts["otelcol"] = _output([str(otelcol), "--version"])
    return facts


def _meminfo_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) // 1024} MiB"
    except OSError:
        pass
    return "unknown"


def _observer_revision(source: Path) -> str:
    """HEAD, whether observer/ has uncommitted edits (others work in this tree), and a
    digest of the sources measured, which names exactly the code."""
    head = _output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _output(["git", "-C", str(REPO), "status", "--porcelain", "--", "observer"])
    state = " + uncommitted changes under observer/" if dirty else ""
    return f"{head}{state}, sources sha256:{observer_digest(source)}"


def observer_digest(source: Path = REPO) -> str:
    """sha256 over <source>/observer/**/*.py (paths and contents), first 12 hex digits."""
    digest = hashlib.sha256()
    for path in sorted((source / "observer").rglob("*.py")):
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def load_average() -> str:
    """The 1-minute load average: other work on the machine, which skews wall times."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
