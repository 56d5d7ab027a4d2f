"""`observer demo`: the agent's log path on an embedded example, with nothing to install.

It writes a small /var/log/pods tree the way the kubelet and containerd do (structured and
plain lines, a line split into 16 KiB partials, interleaved stdout and stderr, a rotation,
a container restart), runs the agent over it with the file sink, and shows what would be
indexed. The example grows as the agent does.
"""

from __future__ import annotations

import asyncio
import collections
import tempfile
from pathlib import Path

import orjson

from observer.agent import app
from observer.config import AgentConfig
from observer.testing import PodLogTree


def write_example(tree: PodLogTree) -> int:
    """Write the example pods' logs; return how many lines were written."""
    checkout = tree.container("shop", "checkout-7d9f8c-x2x4q", "app", uid="5b1c2a7e-0001")
    written = 0
    for order in range(3):
        checkout.write(
            [
                orjson.dumps(
                    {
                        "level": "info" if order else "error",
                        "msg": "order placed" if order else "payment declined",
                        "order_id": 1000 + order,
                        "trace_id": f"4bf92f3577b34da6a3ce929d0e0e47{order:02d}",
                        "span_id": "00f067aa0ba902b7",
                    }
                ).decode()
            ]
        )
        written += 1
    checkout.write(["GET /health 200"], stream="stdout")
    checkout.write(["warning: slow upstream"], stream="stderr")
    checkout.write(["x" * 40_000])  # containerd splits this into three partial lines
    written += 3
    checkout.rotate()
    checkout.write(["after rotation"])
    checkout.restart_container()
    checkout.write(["started again after a crash"])
    dns = tree.container("kube-system", "coredns-5d78c9869d-abcde", "coredns")
    dns.write(["[INFO] plugin/reload: Running configuration SHA512 = 591cf3"])
    return written + 3


def run() -> int:
    with tempfile.TemporaryDirectory(prefix="observer-demo-") as directory:
        workdir = Path(directory)
        tree = PodLogTree(workdir / "pods")
        lines = write_example(tree)
        tree.close()
        out = workdir / "documents.jsonl"
        config = AgentConfig.model_validate(
            {
                "node_name": "demo-node",
                "state_dir": str(workdir / "state"),
                "sources": {"pod_logs": {"root": str(tree.root)}},
                "sinks": {"elasticsearch": None, "file": {"path": str(out)}},
            }
        )
        asyncio.run(app.run(config, once=True))
        documents = [orjson.loads(line) for line in out.read_bytes().splitlines()]

    print(f"observer demo: {lines} lines written by 2 pods → {len(documents)} documents\n")
    structured = next(d for d in documents if "trace" in d)
    print("A structured line, as it would be indexed in Elasticsearch:")
    print(orjson.dumps(structured, option=orjson.OPT_INDENT_2).decode(), "\n")
    print("Every document, in short:")
    for document in documents:
        kubernetes = document["kubernetes"]
        message = document["message"]
        shown = message if len(message) <= 60 else f"{message[:40]}… ({len(message)} characters)"
        level = document.get("log", {}).get("level", "-")
        print(
            f"  {kubernetes['namespace']}/{kubernetes['pod']['name']}/{kubernetes['container']['name']}"
            f" restart={document['container']['restart_count']} {document['stream']:6} {level:5} {shown}"
        )
    per_namespace = collections.Counter(d["kubernetes"]["namespace"] for d in documents)
    print(f"\nDocuments per namespace: {dict(per_namespace)}")
    return 0 if len(documents) == lines else 1
