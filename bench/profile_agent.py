"""Profile `observer agent --once` on the benchmark corpus with cProfile.

    ~/.cache/observer/venv/bin/python bench/profile_agent.py [--lines 2000000] [--top 30]

Runs the same configuration as bench/collection.py (file sink, clean state) under
``python -m cProfile -o <file>``, then prints the functions with the most own time
(tottime) and the most cumulative time. cProfile roughly doubles the run time of a
function-call-heavy path, so read the shares, not the seconds. The profile is kept at
``~/.cache/observer/bench/agent-<lines>.prof`` for `python -m pstats` or snakeviz.
"""

from __future__ import annotations

import argparse
import io
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus as corpus_module
from collection import observer_config
from harness import observer_digest, observer_env, snapshot_observer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", type=Path, help="write the report here as well")
    args = parser.parse_args(argv)

    corpus = corpus_module.ensure(args.lines, args.files, args.seed)
    profile = corpus_module.cache_dir() / f"agent-{args.lines}.prof"
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        source = snapshot_observer(Path(tmp) / "src")
        digest = observer_digest(source)
        config = observer_config(corpus.root, Path(tmp))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                str(profile),
                "-m",
                "observer",
                "agent",
                "--config",
                str(config),
                "--once",
            ],
            env=observer_env(source),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    text = io.StringIO()
    stats = pstats.Stats(str(profile), stream=text)
    stats.strip_dirs()
    text.write(
        f"# cProfile of observer agent --once, {corpus.lines:,} lines, "
        f"sources sha256:{digest}\n\n## by own time\n"
    )
    stats.sort_stats("tottime").print_stats(args.top)
    text.write("\n## by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(args.top)
    report = text.getvalue()
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
