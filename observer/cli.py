"""The `observer` command: one entry point for both deployables and their tools."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from pathlib import Path
from typing import get_args

import yaml

from observer import __version__, config
from observer.telemetry import configure_logging
from observer.tls import TlsFileError

log = logging.getLogger("observer")

EXIT_OK = 0
EXIT_INVALID_CONFIG = 1
EXIT_FAILED = 3
"""A deployable could not start or could not go on (logged); its supervisor restarts it."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="observer", description="Kubernetes observability pipeline: agent and collector."
    )
    parser.add_argument("--version", action="version", version=f"observer {__version__}")
    parser.add_argument(
        "--log-level",
        choices=get_args(config.LogLevel),
        help="overrides telemetry.log_level from the configuration file",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    agent = commands.add_parser("agent", help="run the per-node agent")
    agent.add_argument("--config", type=Path, required=True, help="path to agent.yaml")
    agent.add_argument(
        "--once", action="store_true", help="read every existing file to its end, deliver, exit"
    )

    collector = commands.add_parser("collector", help="run the trace collector")
    collector.add_argument("--config", type=Path, required=True, help="path to collector.yaml")

    commands.add_parser("demo", help="run the agent on an embedded example")

    check = commands.add_parser(
        "check-config", help="validate a configuration file and report every mistake"
    )
    check.add_argument("file", type=Path)
    check.add_argument(
        "--deployable",
        choices=get_args(config.Deployable),
        help="which deployable the file is for (default: guessed from the file name)",
    )
    check.add_argument(
        "--show", action="store_true", help="print the effective configuration, defaults included"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level or "info")
    if args.command == "check-config":
        return check_config(args.file, args.deployable, args.show)
    if args.command == "agent":
        return run_agent(args.config, args.once, args.log_level)
    if args.command == "collector":
        return run_collector(args.config, args.log_level)
    if args.command == "demo":
        from observer import demo

        configure_logging(args.log_level or "warning")
        return demo.run()
    raise AssertionError(f"argparse let through an unknown command: {args.command!r}")


def run_agent(path: Path, once: bool, log_level: str | None) -> int:
    from observer.agent import app

    try:
        loaded = config.load_agent(path)
    except config.ConfigError as error:
        for problem in error.problems:
            log.error("Invalid configuration.", extra={"file": error.source, "problem": problem})
        return EXIT_INVALID_CONFIG
    configure_logging(log_level or loaded.telemetry.log_level)
    _tune_garbage_collection()
    try:
        asyncio.run(app.run(loaded, once))
    except TlsFileError as error:
        log.error("The agent cannot start.", extra={"problem": str(error)})
        return EXIT_FAILED
    return EXIT_OK


def run_collector(path: Path, log_level: str | None) -> int:
    from observer.collector import app

    try:
        loaded = config.load_collector(path)
    except config.ConfigError as error:
        for problem in error.problems:
            log.error("Invalid configuration.", extra={"file": error.source, "problem": problem})
        return EXIT_INVALID_CONFIG
    configure_logging(log_level or loaded.telemetry.log_level)
    # Spans, their attribute dicts and traces are many short-lived objects, as documents
    # are in the agent (bench/collector.py measures the collector tuned so).
    _tune_garbage_collection()
    try:
        asyncio.run(app.run(loaded))
    except app.CollectorError:
        return EXIT_FAILED
    return EXIT_OK


def _tune_garbage_collection() -> None:
    """Fewer collections for a process that makes millions of short-lived, acyclic dicts.

    Every document is a few dicts freed by reference counting; the cycle collector's
    default (a pass every 700 allocations) spent ~40% of the agent's CPU on them
    (bench/results/collection-2026-11-21-profile.md). Objects alive after start-up
    (modules, configuration) are frozen out of its passes.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def check_config(path: Path, deployable: config.Deployable | None, show: bool) -> int:
    deployable = deployable or _guess_deployable(path)
    if deployable is None:
        print(
            f"{path}: cannot tell whether this is an agent or a collector configuration; "
            "pass --deployable agent|collector",
            file=sys.stderr,
        )
        return EXIT_INVALID_CONFIG
    try:
        loaded = config.load(deployable, path)
    except config.ConfigError as error:
        print(f"{error.source}: {len(error.problems)} problem(s):", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    if show:
        print(yaml.safe_dump(loaded.model_dump(mode="json"), sort_keys=False), end="")
    print(f"{path}: valid {deployable} configuration", file=sys.stderr)
    return EXIT_OK


def _guess_deployable(path: Path) -> config.Deployable | None:
    matches = [name for name in get_args(config.Deployable) if name in path.name]
    return matches[0] if len(matches) == 1 else None
