"""observer's agent under variations that need no code change: GC settings, queue size.

    ~/.cache/observer/venv/bin/python bench/agent_variants.py [--lines 500000] [--runs 2]

Each variant runs `observer agent --once` (the file sink, as in bench/collection.py) in a
fresh interpreter whose first statements apply the variant, then the CLI's `main`. The
variants are interleaved; CPU seconds per million lines and peak RSS come from rusage.
This tells the lead what a change to the agent's start-up or defaults would buy before
making it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus as corpus_module
from collection import observer_config
from harness import load_average, observer_digest, observer_env, run_to_end, snapshot_observer

_IMPORTS = "import gc, observer.cli, observer.agent.app, observer.sinks.file; "

VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    # name: (Python run before the CLI, keys added under sources.pod_logs)
    "baseline": ("", {}),
    "gc.freeze() after imports": (_IMPORTS + "gc.collect(); gc.freeze(); ", {}),
    "gc threshold0 50000": ("import gc; gc.set_threshold(50_000); ", {}),
    "gc freeze + threshold0 50000": (
        _IMPORTS + "gc.collect(); gc.freeze(); gc.set_threshold(50_000); ",
        {},
    ),
    "queue_batches 4": ("", {"queue_batches": 4}),
    "gc freeze + threshold + queue 4": (
        _IMPORTS + "gc.collect(); gc.freeze(); gc.set_threshold(50_000); ",
        {"queue_batches": 4},
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--only", nargs="*", metavar="NAME", help="variants to run (default all)")
    args = parser.parse_args(argv)
    variants = {k: v for k, v in VARIANTS.items() if not args.only or k in args.only}

    corpus = corpus_module.ensure(args.lines, args.files)
    snapshot = tempfile.TemporaryDirectory(prefix="bench-observer-src-")
    source = snapshot_observer(Path(snapshot.name))
    print(f"observer sources sha256:{observer_digest(source)}", file=sys.stderr)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, (prelude, settings) in variants.items():
            with tempfile.TemporaryDirectory(prefix="bench-variant-") as tmp:
                config = observer_config(corpus.root, Path(tmp))
                if settings:
                    added = "".join(f"    {key}: {value}\n" for key, value in settings.items())
                    config.write_text(config.read_text().replace("    root:", added + "    root:"))
                code = (
                    prelude + "import sys; from observer.cli import main; "
                    f"sys.exit(main(['agent', '--config', {str(config)!r}, '--once']))"
                )
                load = load_average()
                m = run_to_end(
                    [sys.executable, "-c", code], Path(tmp) / "log", env=observer_env(source)
                )
                if m.returncode != 0:
                    raise RuntimeError((Path(tmp) / "log").read_text()[-2000:])
            per_million = m.cpu_s / (corpus.lines / 1e6)
            results[name].append((per_million, m.max_rss_mb))
            print(
                f"{name:34s} CPU s/M {per_million:6.2f}  RSS {m.max_rss_mb:6.1f} MB  "
                f"wall {m.wall_s:5.1f} s  load {load}",
                file=sys.stderr,
                flush=True,
            )

    print(
        f"| variant ({corpus.lines:,} lines, {args.runs} runs) | CPU s / M lines (median) | peak RSS MB |"
    )
    print("|---|---|---|")
    for name, values in results.items():
        cpu = statistics.median(v[0] for v in values)
        rss = max(v[1] for v in values)
        print(f"| {name} | {cpu:.2f} | {rss:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
