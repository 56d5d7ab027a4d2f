"""Spans through the agent: receive (OTLP/gRPC) → enrich (pod by peer IP) → export by trace id.

    ~/.cache/observer/venv/bin/python bench/spans.py [--spans 1000000] [--runs 2]
    ~/.cache/observer/venv/bin/python bench/spans.py --spans 100000 --runs 1 --no-write   # smoke
    ~/.cache/observer/venv/bin/python bench/spans.py --skip-throughput --slow-replicas 20000 \\
        --tools observer,otelcol,otelcol-queue-batch --results-suffix=-slow-replicas

The measurement: the tools measured side by side and interleaved (observer, otelcol,
observer, otelcol…) on the same load, sampled while they run, and the report. Beside it:

- span_tools.py: the measured tools (observer's agent; otelcol's otlp → k8sattributes →
  batch → loadbalancing, or `otelcol-queue-batch` without the batch processor), their
  configurations, the sender's pod on a real kube-apiserver (tests/services/kubernetes.py)
  that both find by the connection's address, and their own counters;
- span_load.py: the helper processes, not measured: three OTLP/gRPC replicas (counting
  spans, checking that no trace reached two of them, optionally slow) and the load
  (pre-encoded requests, paced or as fast as answered);
- span_report.py: the report.

Modes:

- throughput: `--spans` spans as fast as they are taken, a refusal resent after 50 ms.
  Spans per CPU-second of the measured process, two ways: whole life (rusage user+system
  at exit, start-up included) and steady state (/proc/<pid>/stat utime+stime read when the
  load is started, the tool idle since its warm-up, and when the replicas have every
  span: what an agent running for days pays per span, without the interpreter's start-up,
  imports and first pod list).
- overload: `--load-processes` load processes, together paced at twice the intake rate
  the tool reached, for `--overload-seconds`, refusals not resent, the tool alone on CPU 0.
- slow replicas (`--slow-replicas RATE`, after the others): the replicas take RATE spans/s
  together while the load offers `--slow-offered` times that, paced, for
  `--slow-seconds`, refusals not resent; both tools' export queues bounded at
  `--slow-queue-mib` (observer's `sinks.collector.queue.max_bytes`; otelcol's per-replica
  `sending_queue` by bytes, a third each, 2 consumers per replica as observer's
  `max_in_flight`). Reported: spans offered, accepted, refused (the load's count and the
  tool's own counters), the answers' codes, spans delivered, and RSS over time
  (/proc/<pid>/status VmRSS every 0.5 s: peak, and the mean of the load's last 10 s).
  Then the replicas get what the tool still holds, for up to `--slow-drain-seconds`.

`--compression none` turns off both tools' export compression.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    BENCH,
    REPO,
    free_port,
    load_average,
    machine_facts,
    observer_env,
    prometheus_value,
    run_until,
    snapshot_observer,
)
from span_load import add_commands, read_json, run_command
from span_report import write_report
from span_tools import TOOLS, sender_pod, spans_otelcol_binary, tool_command, tool_counters

HELPER = [sys.executable, str(BENCH / "span_load.py")]
SAMPLE_EVERY_S = 0.5
TAIL_S = 10.0
"""Slow replicas: memory is judged on the mean RSS over the load's last TAIL_S seconds."""
DRAIN_STALL_S = 3.0
"""Slow replicas: the drain ends when no span reached the replicas for this long."""


@dataclass(frozen=True)
class Mode:
    """How one run loads the tool."""

    name: str
    """throughput, overload or slow-replicas."""
    rate: float | None = None
    """Offered spans/s over all load processes, paced, refusals not resent; None: `--spans`
    spans as fast as they are answered, refusals resent."""
    seconds: float | None = None
    load_processes: int = 1
    load_workers: int = 4
    pinned: bool = False
    """The tool alone on CPU 0, the helpers on the others."""
    replica_rate: float = 0.0
    """Spans/s the replicas take together; 0: as fast as they can."""
    queue_bytes: int | None = None
    """Both tools' export queue bound; None: their defaults."""


# --- the measured process, read from /proc -----------------------------------------------


class ProcStat:
    """CPU and resident memory of a running process, from /proc (the harness's rusage
    comes only at exit)."""

    TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")

    def __init__(self, pid: int, proc: Path = Path("/proc")) -> None:
        self.root = proc / str(pid)

    def cpu_s(self) -> float | None:
        """utime + stime of every thread (proc(5): fields 14 and 15, clock ticks)."""
        try:
            fields = (self.root / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) * self.TICK_S

    def rss_mb(self) -> float | None:
        try:
            for line in (self.root / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None


@dataclass
class Sample:
    t: float
    """time.monotonic() while sampling; in a run's figures, seconds since the load was
    started (negative before)."""
    rss_mb: float | None
    cpu_s: float | None
    delivered: int
    queue_bytes: float | None = None


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def pinned(cpus: set[int] | None) -> Any:
    """A preexec_fn that keeps a child on `cpus` (None: anywhere)."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def child_setup(cpus: set[int] | None, pid_file: Path) -> Callable[[], None]:
    """The measured process's preexec_fn: keep it on `cpus` (None: anywhere) and write its
    pid, which exec keeps, so that it can be read in /proc while it runs."""

    def setup() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        fd = os.open(pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)

    return setup


class Watch:
    """`run_until`'s `done`, polled every 0.1 s: starts the load once the tool listens and
    has had its warm-up, samples the tool's CPU and RSS from /proc, and says when the
    mode's work is complete."""

    def __init__(
        self,
        tool: str,
        mode: Mode,
        args: argparse.Namespace,
        work: Path,
        ports: tuple[int, int],
        status: Path,
        spawn_load: Callable[[list[str]], subprocess.Popen[bytes]],
    ) -> None:
        self.tool, self.mode, self.args = tool, mode, args
        self.port, self.telemetry = ports
        self.status = status
        self.pid_file = work / "tool.pid"
        self.spawn_load = spawn_load
        self.load_results = [work / f"load-{n}.json" for n in range(mode.load_processes)]
        self.load: list[subprocess.Popen[bytes]] = []
        self.proc: ProcStat | None = None
        self.samples: list[Sample] = []
        self.next_sample = 0.0
        self.load_started: float | None = None
        self.load_ended: float | None = None
        self.cpu_at_load_start: float | None = None
        self.rss_at_load_start: float | None = None
        self.cpu_at_end: float | None = None
        self.delivered_at_end = 0
        self.last_delivered = (0, 0.0)
        self.counts: dict[str, float | None] = {}

    def __call__(self) -> bool:
        now = time.monotonic()
        if self.proc is None:
            self.proc = ProcStat(int(self.pid_file.read_text()))
        delivered = int(read_json(self.status).get("spans", 0))
        if now >= self.next_sample:
            self.sample(now, delivered)
        if self.load_started is None:
            if port_open(self.port):
                time.sleep(self.args.warmup)  # metadata synced: both tools list pods at start
                self.start_load()
            return False
        if self.mode.rate is None:
            return delivered >= self.args.spans and self.finish(delivered)
        if any(process.poll() is None for process in self.load):
            return False
        if self.load_ended is None:
            self.load_ended = now
        if self.mode.name == "overload":
            time.sleep(1.0)  # what was accepted reaches the replicas
            return self.finish(int(read_json(self.status).get("spans", 0)))
        # Slow replicas: what the tool holds reaches them at their pace; done when nothing
        # more arrives (its queue is empty) or the drain's time is up.
        if delivered != self.last_delivered[0]:
            self.last_delivered = (delivered, now)
        if (
            now - self.last_delivered[1] >= DRAIN_STALL_S
            or now - self.load_ended >= self.args.slow_drain_seconds
        ):
            return self.finish(delivered)
        return False

    def start_load(self) -> None:
        assert self.proc is not None
        # The tool has been idle since the warm-up began: CPU from here on is the load's.
        self.cpu_at_load_start = self.proc.cpu_s()
        self.rss_at_load_start = self.proc.rss_mb()
        self.load_started = time.monotonic()
        mode = self.mode
        for number, result in enumerate(self.load_results):
            command = [
                "load",
                "--target",
                f"127.0.0.1:{self.port}",
                "--spans",
                str(self.args.spans),
                "--result",
                str(result),
                "--seed",
                str(number + 1),
            ]
            if mode.rate is not None:
                command += ["--rate", str(mode.rate / mode.load_processes)]
                command += ["--seconds", str(mode.seconds), "--workers", str(mode.load_workers)]
            self.load.append(self.spawn_load(command))

    def sample(self, now: float, delivered: int) -> None:
        assert self.proc is not None
        self.next_sample = now + SAMPLE_EVERY_S
        queue = None
        if self.tool == "observer" and self.mode.name == "slow-replicas":
            url = f"http://127.0.0.1:{self.telemetry}/metrics"
            queue = prometheus_value(url, "observer_span_queue_bytes")
        self.samples.append(Sample(now, self.proc.rss_mb(), self.proc.cpu_s(), delivered, queue))

    def finish(self, delivered: int) -> bool:
        assert self.proc is not None
        self.cpu_at_end = self.proc.cpu_s()
        self.delivered_at_end = delivered
        self.sample(time.monotonic(), delivered)
        if self.mode.rate is not None:
            self.counts = tool_counters(self.tool, self.telemetry)
        return True

    def stop_load(self) -> None:
        for process in self.load:
            if process.poll() is None:
                process.kill()
            process.wait()

    def figures(self) -> dict[str, Any]:
        """Steady-state CPU and, for slow replicas, memory over the load."""
        out: dict[str, Any] = {
            "startup_cpu_s": self.cpu_at_load_start,
            "sampling": {
                "every_s": SAMPLE_EVERY_S,
                "tail_s": TAIL_S,
                "drain_stall_s": DRAIN_STALL_S,
                "cpu_tick_s": ProcStat.TICK_S,
            },
        }
        if self.cpu_at_load_start is not None and self.cpu_at_end is not None:
            cpu = self.cpu_at_end - self.cpu_at_load_start
            out["steady_cpu_s"] = cpu
            out["steady_spans_per_cpu_s"] = self.delivered_at_end / cpu if cpu > 0 else 0.0
        started = self.load_started if self.load_started is not None else 0.0
        samples = [
            Sample(s.t - started, s.rss_mb, s.cpu_s, s.delivered, s.queue_bytes)
            for s in self.samples
        ]
        if self.mode.name == "slow-replicas" and self.load_started is not None:
            ended = (self.load_ended or time.monotonic()) - started
            during = [s.rss_mb for s in samples if 0 <= s.t <= ended and s.rss_mb]
            tail = [s.rss_mb for s in samples if ended - TAIL_S <= s.t <= ended and s.rss_mb]
            queued = [s.queue_bytes for s in samples if s.queue_bytes is not None]
            out["memory"] = {
                "load_s": ended,
                "before_load_mb": self.rss_at_load_start,
                "peak_during_load_mb": max(during, default=None),
                "tail_mean_mb": statistics.mean(tail) if tail else None,
                "after_drain_mb": samples[-1].rss_mb,
                "queue_peak_bytes": max(queued, default=None),
            }
        out["samples"] = [asdict(sample) for sample in samples]
        return out


def run_one(
    tool: str, mode: Mode, args: argparse.Namespace, kube: Any, source: Path, otelcol: Path
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"spans-{tool}-") as tmp:
        work = Path(tmp)
        (work / "pods").mkdir()
        sinks = [free_port() for _ in range(3)]
        ports = (free_port(), free_port())
        status = work / "sinks.json"
        # Overload: the measured tool gets CPU 0 alone and the helpers (load, replicas) the
        # others. Sharing both cores, the Python load could never offer more than the tool
        # took in: it was slowed as much as the tool. The other modes are not pinned.
        cpus = os.cpu_count() or 1
        tool_cpus = {0} if mode.pinned and cpus > 1 else None
        helper_cpus = set(range(1, cpus)) if tool_cpus else None
        env = observer_env(source)
        sink_process = subprocess.Popen(
            [
                *HELPER,
                "sink",
                "--ports",
                ",".join(map(str, sinks)),
                "--status",
                str(status),
                "--rate",
                str(mode.replica_rate),
            ],
            env=env,
            preexec_fn=pinned(helper_cpus),
        )
        deadline = time.monotonic() + 60
        while not read_json(status) and time.monotonic() < deadline:
            time.sleep(0.1)
        argv, tool_env = tool_command(
            tool,
            work,
            ports,
            sinks,
            kube,
            source,
            otelcol,
            args.compression,
            queue_bytes=mode.queue_bytes,
            otelcol_metrics=mode.name != "throughput",
        )

        def spawn_load(command: list[str]) -> subprocess.Popen[bytes]:
            return subprocess.Popen([*HELPER, *command], env=env, preexec_fn=pinned(helper_cpus))

        watch = Watch(tool, mode, args, work, ports, status, spawn_load)
        try:
            measured = run_until(
                argv,
                work / f"{tool}.log",
                watch,
                timeout_s=args.timeout,
                poll_s=0.1,
                env=tool_env,
                preexec_fn=child_setup(tool_cpus, watch.pid_file),
            )
        finally:
            watch.stop_load()
            sink_report = read_json(status)
            sink_process.kill()
            sink_process.wait()
        row: dict[str, Any] = {"tool": tool, "mode": mode.name, **asdict(measured)}
        row["sinks"] = sink_report
        loads = [read_json(result) for result in watch.load_results]
        row["load"] = load_totals(loads)
        if mode.rate is not None:
            row["offered_spans_per_s"] = mode.rate
            row["tool_counts"] = watch.counts
        if mode.name == "slow-replicas":
            row["replica_spans_per_s"] = mode.replica_rate
            row["queue_bytes"] = mode.queue_bytes
        delivered = sink_report.get("spans", 0)
        row["spans_per_cpu_s"] = delivered / measured.cpu_s if measured.cpu_s else 0.0
        row["spans_per_wall_s"] = delivered / measured.wall_s if measured.wall_s else 0.0
        row.update(watch.figures())
        if mode.name == "throughput" and (
            sink_report.get("traces_on_two_sinks") or sink_report.get("enriched", 0) < args.spans
        ):
            row["invalid"] = "traces split across sinks or spans not enriched"
            tail = (work / f"{tool}.log").read_text(errors="replace").splitlines()[-40:]
            print(f"{tool} run invalid; the end of its log:", *tail, sep="\n", file=sys.stderr)
        return row


def load_totals(loads: list[dict[str, Any]]) -> dict[str, Any]:
    """The load processes' results, summed."""
    totals: dict[str, Any] = {
        key: sum(part.get(key, 0) for part in loads)
        for key in ("sent", "accepted", "refused", "refusals_with_retry_info")
    }
    codes: dict[str, int] = {}
    for part in loads:
        for code, count in part.get("codes", {}).items():
            codes[code] = codes.get(code, 0) + count
    totals["codes"] = codes
    firsts = [part["first_refusal_s"] for part in loads if part.get("first_refusal_s") is not None]
    totals["first_refusal_s"] = min(firsts, default=None)
    totals["seconds"] = max((part.get("seconds", 0) for part in loads), default=0)
    totals["processes"] = len(loads)
    return totals


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_commands(parser.add_subparsers(dest="command"))
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument(
        "--tools", default="observer,otelcol", help=f"comma-separated, of {', '.join(TOOLS)}"
    )
    parser.add_argument("--overload-seconds", type=float, default=20.0)
    parser.add_argument("--skip-overload", action="store_true")
    parser.add_argument(
        "--skip-throughput",
        action="store_true",
        help="no throughput runs (and so no overload): only --slow-replicas",
    )
    parser.add_argument(
        "--load-processes",
        type=int,
        default=4,
        choices=range(1, 9),
        metavar="1..8",
        help="load processes in the overload run, sharing its rate",
    )
    parser.add_argument(
        "--load-workers",
        type=int,
        default=16,
        choices=range(1, 257),
        metavar="1..256",
        help="requests in flight per load process in the overload and slow-replica runs",
    )
    parser.add_argument(
        "--compression",
        choices=("gzip", "none"),
        default="gzip",
        help="both tools' export compression (gzip is both defaults)",
    )
    slow = parser.add_argument_group("slow replicas (run after the other modes)")
    slow.add_argument(
        "--slow-replicas",
        type=float,
        default=0.0,
        metavar="SPANS_PER_S",
        help="run the slow-replica mode: the replicas take this many spans/s together",
    )
    slow.add_argument(
        "--slow-offered", type=float, default=2.0, help="load offered, × the replicas' rate"
    )
    slow.add_argument("--slow-seconds", type=float, default=60.0, help="how long the load runs")
    slow.add_argument(
        "--slow-queue-mib",
        type=int,
        default=64,
        help="both tools' export queue bound (64: observer's default)",
    )
    slow.add_argument(
        "--slow-drain-seconds",
        type=float,
        default=60.0,
        help="the most the replicas get, after the load, to receive the tool's queue",
    )
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--results-suffix", default="", help="results/spans-<date><suffix>.md, for another run"
    )
    args = parser.parse_args(argv)
    if args.command:
        return run_command(args)
    tools = args.tools.split(",")
    if unknown := set(tools) - set(TOOLS):
        parser.error(f"--tools: unknown {', '.join(sorted(unknown))}; known: {', '.join(TOOLS)}")
    if args.skip_throughput and not args.slow_replicas:
        parser.error("--skip-throughput leaves nothing to run without --slow-replicas")

    sys.path.insert(0, str(REPO))
    from tests.services import kubernetes

    wants_otelcol = any(tool != "observer" for tool in tools)
    otelcol = spans_otelcol_binary() if wants_otelcol else Path("otelcol-not-used")
    snapshot = Path(tempfile.mkdtemp(prefix="spans-observer-src-"))
    source = snapshot_observer(snapshot)
    kube = kubernetes.start(Path(tempfile.mkdtemp(prefix="spans-kube-")))
    rows: list[dict[str, Any]] = []

    def measure(tool: str, mode: Mode, run: int | str) -> dict[str, Any]:
        before = load_average()
        row = run_one(tool, mode, args, kube, source, otelcol)
        row.update(run=run, load_before=before)
        rows.append(row)
        keys = ("tool", "run", "mode", "spans_per_cpu_s", "steady_spans_per_cpu_s", "max_rss_mb")
        print(json.dumps({**{k: row.get(k) for k in keys}, "sinks": row["sinks"]}), flush=True)
        return row

    try:
        sender_pod(kube)
        if not args.skip_throughput:
            for run in range(1, args.runs + 1):
                for tool in tools:
                    measure(tool, Mode("throughput"), run)
        if not args.skip_throughput and not args.skip_overload:
            for tool in tools:
                # The tool's best intake rate, as its load saw it (the wall figure also
                # holds start-up and the warm-up pause, which would understate it).
                best = max(
                    r["load"]["accepted"] / r["load"]["seconds"]
                    for r in rows
                    if r["tool"] == tool and r["load"].get("seconds")
                )
                mode = Mode(
                    "overload",
                    rate=2 * best,
                    seconds=args.overload_seconds,
                    load_processes=args.load_processes,
                    load_workers=args.load_workers,
                    pinned=True,
                )
                measure(tool, mode, "2×")
        if args.slow_replicas:
            offered = args.slow_offered * args.slow_replicas
            mode = Mode(
                "slow-replicas",
                rate=offered,
                seconds=args.slow_seconds,
                # One Python load process offers up to about 100,000 spans/s on this machine.
                load_processes=min(8, math.ceil(offered / 60_000)),
                load_workers=args.load_workers,
                replica_rate=args.slow_replicas,
                queue_bytes=args.slow_queue_mib << 20,
            )
            for tool in tools:
                measure(tool, mode, "slow")
    finally:
        kube.stop()
    facts = machine_facts(otelcol if wants_otelcol else None, source)
    report = write_report(rows, facts, args)
    print(report)
    if not args.no_write:
        stem = BENCH / "results" / f"spans-{datetime.date.today().isoformat()}{args.results_suffix}"
        stem.with_suffix(".md").write_text(report)
        stem.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
