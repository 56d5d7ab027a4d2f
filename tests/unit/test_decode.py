"""Decoding kubelet log files (CRI and docker json-file) into ECS documents."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from observer.agent.decode import TRUNCATED_MARK, Decoder, Origin
from observer.agent.tail import first_line_time

ROOT = Path("/var/log/pods")
PATH = ROOT / "shop_checkout-7d9f8-x2x_0f9e8d7c-1111-2222-3333-444455556666" / "app" / "2.log"


def decoder(max_line_bytes: int = 1 << 20) -> Decoder:
    origin = Origin.from_path(ROOT, PATH)
    assert origin is not None
    return Decoder(origin, max_line_bytes)


def decode(data: bytes, max_line_bytes: int = 1 << 20) -> list[dict]:
    return decoder(max_line_bytes).decode(data, 0)


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("default_web-0_abc-123/nginx/0.log", ("default", "web-0", "abc-123", "nginx", 0)),
        (
            "kube-system_coredns-5d78c9869d-abcde_u1/coredns/12.log",
            ("kube-system", "coredns-5d78c9869d-abcde", "u1", "coredns", 12),
        ),
        ("ns_pod_uid/c/0.log.20261121-223112", ("ns", "pod", "uid", "c", 0)),
        ("ns_pod_uid/c/0.log.20261121-223112.gz", None),
        ("ns_pod_uid/c/0.log.copy", None),
        ("ns_pod_uid/c/0.log.tmp", None),
        ("ns_pod_uid/c/notes.txt", None),
        ("ns_pod_uid/c/x.log", None),
        ("nounderscore/c/0.log", None),
        ("ns_pod_uid/0.log", None),
    ],
)
def test_origin_from_the_kubelet_path(relative: str, expected: tuple | None) -> None:
    """The path alone gives namespace, pod, uid, container and restart count."""
    origin = Origin.from_path(ROOT, ROOT / relative)
    found = origin and (
        origin.namespace,
        origin.pod,
        origin.uid,
        origin.container,
        origin.restart_count,
    )
    assert found == expected


def test_cri_line_becomes_an_ecs_document() -> None:
    """A full CRI line keeps its nanosecond timestamp, stream and the path's metadata."""
    (document,) = decode(b"2026-11-21T22:31:12.123456789Z stderr F connection refused\n")
    assert document == {
        "@timestamp": "2026-11-21T22:31:12.123456789Z",
        "message": "connection refused",
        "stream": "stderr",
        "log": {"file": {"path": str(PATH)}, "offset": 0},
        "kubernetes": {
            "namespace": "shop",
            "pod": {"name": "checkout-7d9f8-x2x", "uid": "0f9e8d7c-1111-2222-3333-444455556666"},
            "container": {"name": "app"},
        },
        "container": {"restart_count": 2},
    }


def test_kubelet_split_16k_partials_merge_into_one_line() -> None:
    """containerd's 16 KiB P parts and the closing F part become one message at the first part's offset."""
    chunk = "x" * 16384
    data = (
        f"2026-11-21T00:00:00.1Z stdout P {chunk}\n"
        f"2026-11-21T00:00:00.2Z stdout P {chunk}\n"
        f"2026-11-21T00:00:00.3Z stdout F tail\n"
        "2026-11-21T00:00:00.4Z stdout F next\n"
    ).encode()
    first, second = decode(data)
    assert first["message"] == chunk * 2 + "tail"
    assert first["@timestamp"] == "2026-11-21T00:00:00.1Z"
    assert first["log"]["offset"] == 0
    assert second["message"] == "next"
    assert second["log"]["offset"] == data.index(b"2026-11-21T00:00:00.4Z")


def test_interleaved_stdout_and_stderr_partials_merge_per_stream() -> None:
    """Parts of stdout and stderr that interleave in one file are merged each with its own."""
    data = b"t1 stdout P out-a \nt2 stderr P err-a \nt3 stdout F out-b\nt4 stderr F err-b\n"
    documents = decode(data)
    assert [(d["stream"], d["message"]) for d in documents] == [
        ("stdout", "out-a out-b"),
        ("stderr", "err-a err-b"),
    ]


def test_partial_pending_across_reads_sets_the_resume_offset() -> None:
    """A partial not yet closed keeps reading's resume point at its start, so a restart loses nothing."""
    d = decoder()
    first = b"t1 stdout F done\n"
    second = b"t2 stdout P half-\n"
    assert len(d.decode(first, 0)) == 1
    assert d.decode(second, len(first)) == []
    assert d.resume_offset(len(first) + len(second)) == len(first)
    (merged,) = d.decode(b"t3 stdout F line\n", len(first) + len(second))
    assert merged["message"] == "half-line"
    assert d.resume_offset(100) == 100


def test_resuming_inside_interleaved_partials_skips_what_was_delivered() -> None:
    """Reading again from a checkpoint inside the other stream's delivered line, with its
    `Replay`, yields only the lines not yet delivered: no fragment becomes a line of its own."""
    lines = [
        b"t1 stdout P out-a \n",
        b"t2 stderr P err-a \n",
        b"t3 stdout F out-b\n",
        b"x not a log line\n",
        b"t4 stderr F err-b\n",
    ]
    data = b"".join(lines)
    first_run = decoder()
    until = sum(map(len, lines[:4]))
    delivered = first_run.decode(data[:until], 0)
    assert [d["message"] for d in delivered] == ["out-a out-b", "x not a log line"]
    offset, replay = first_run.resume_point(until)
    assert offset == len(lines[0])

    second_run = decoder()
    second_run.replay(replay)
    resumed = second_run.decode(data[offset:], offset)
    assert [(d["stream"], d["message"]) for d in resumed] == [("stderr", "err-a err-b")]


@pytest.mark.parametrize(
    ("line", "message", "stream", "timestamp"),
    [
        (
            b'{"log":"hello world\\n","stream":"stdout","time":"2026-11-21T22:31:12.123456789Z"}',
            "hello world",
            "stdout",
            "2026-11-21T22:31:12.123456789Z",
        ),
        (
            b'{"log":"tab\\there \\"quoted\\" \\u00e9\\n","stream":"stderr","time":"t"}',
            'tab\there "quoted" é',
            "stderr",
            "t",
        ),
        (
            '{"log":"emoji 🚀 and 漢字\\n","stream":"stdout","time":"t"}'.encode(),
            "emoji 🚀 and 漢字",
            "stdout",
            "t",
        ),
        (
            b'{"log":"\\ud83d\\ude80 escaped\\n","stream":"stdout","time":"t"}',
            "🚀 escaped",
            "stdout",
            "t",
        ),
    ],
)
def test_docker_json_lines_with_escapes(
    line: bytes, message: str, stream: str, timestamp: str
) -> None:
    """docker json-file lines decode with their escapes, emoji and stream."""
    (document,) = decode(line + b"\n")
    assert (document["message"], document["stream"], document["@timestamp"]) == (
        message,
        stream,
        timestamp,
    )


def test_docker_partials_merge_until_a_newline() -> None:
    """docker's lines without a trailing newline are parts of the next one, per stream."""
    data = (
        b'{"log":"part one, ","stream":"stdout","time":"t1"}\n'
        b'{"log":"err\\n","stream":"stderr","time":"t2"}\n'
        b'{"log":"part two\\n","stream":"stdout","time":"t3"}\n'
    )
    assert [(d["stream"], d["message"]) for d in decode(data)] == [
        ("stderr", "err"),
        ("stdout", "part one, part two"),
    ]


def test_overlong_line_is_truncated_with_a_mark_and_counted() -> None:
    """A merged line past the maximum keeps max bytes, gains a mark, and is counted."""
    d = decoder(max_line_bytes=10)
    (document,) = d.decode(b"t stdout P 0123456\nt stdout P 789abcdef\nt stdout F ghij\n", 0)
    assert document["message"] == "0123456789" + TRUNCATED_MARK
    assert document["log"]["flags"] == ["truncated"]
    assert d.counts.truncated == 1


def test_invalid_utf8_becomes_replacement_characters_and_is_counted() -> None:
    """Bytes that are not UTF-8 become U+FFFD; the line is kept and counted."""
    d = decoder()
    (document,) = d.decode(b"t stdout F caf\xe9 au lait\n", 0)
    assert document["message"] == "caf\ufffd au lait"
    assert d.counts.invalid_utf8 == 1


@pytest.mark.parametrize(
    "line",
    [b"just some text without structure", b"t stdin F wrong stream", b"t stdout X wrong tag"],
)
def test_lines_in_neither_format_are_kept_with_an_error(line: bytes) -> None:
    """A line that is not CRI is kept as raw text with error.message, and counted."""
    d = decoder()
    d.format = "cri"
    (document,) = d.decode(line + b"\n", 0)
    assert document["message"] == line.decode()
    assert document["error"]["message"] == "not a CRI log line"
    assert d.counts.malformed == 1


def test_broken_docker_line_is_kept_with_an_error() -> None:
    """A docker-format file with a broken JSON line keeps it with error.message."""
    d = decoder()
    documents = d.decode(b'{"log":"ok\\n","stream":"stdout","time":"t"}\n{"log": "cut\n', 0)
    assert documents[0]["message"] == "ok"
    assert documents[1]["error"]["message"] == "not a docker json-file log line"
    assert d.counts.malformed == 1


def test_json_body_fields_are_lifted_into_ecs() -> None:
    """A JSON object body gives message, log.level, trace.id and span.id; other keys go under json."""
    body = {
        "msg": "payment declined",
        "level": "ERROR",
        "trace_id": "4BF92F3577B34DA6A3CE929D0E0E4736",
        "spanId": "00f067aa0ba902b7",
        "order": {"id": 42},
        "message_count": 3,
    }
    (document,) = decode(b"t stdout F " + orjson.dumps(body) + b"\n")
    assert document["message"] == "payment declined"
    assert document["log"]["level"] == "error"
    assert document["trace"] == {"id": "4bf92f3577b34da6a3ce929d0e0e4736"}
    assert document["span"] == {"id": "00f067aa0ba902b7"}
    assert document["json"] == {"order": {"id": 42}, "message_count": 3}


def test_64_bit_trace_ids_are_padded_as_opentelemetry_does() -> None:
    """A 64-bit B3 trace id in a log line is left-padded to the 128-bit form spans use."""
    (document,) = decode(b't stdout F {"message":"x","traceId":"a3ce929d0e0e4736"}\n')
    assert document["trace"] == {"id": "0000000000000000a3ce929d0e0e4736"}


def test_json_body_that_is_not_an_object_stays_text() -> None:
    """Braces that are not a JSON object leave the message as written."""
    (document,) = decode(b"t stdout F {not json}\n")
    assert document["message"] == "{not json}"
    assert "json" not in document


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        (b"2026-11-21T10:00:00.1Z stdout F a\n", b"2026-11-21T10:00:00.15Z stdout F b\n"),
        (b"2026-11-21T10:00:00Z stdout F a\n", b"2026-11-21T10:00:00.5Z stdout F b\n"),
        (b"2026-11-21T11:59:59.9+01:00 stdout F a\n", b"2026-11-21T11:00:00Z stdout F b\n"),
        (
            b'{"log":"a\\n","stream":"stdout","time":"2026-11-21T10:00:00.000000001Z"}\n',
            b'{"log":"b\\n","stream":"stdout","time":"2026-11-21T10:00:01Z"}\n',
        ),
        (
            b"2026-11-21T10:00:00.000000001Z stdout F a\n",
            b"2026-11-21T10:00:00.000000002Z stdout F b\n",
        ),
        (b"2026-11-21T10:00:00Z stdout F a\n", b"not a log line\n"),
    ],
)
def test_files_compare_by_when_their_first_line_was_written(older: bytes, newer: bytes) -> None:
    """A container's files are ordered by their first line's time (RFC 3339 with trimmed
    fractions and offsets, CRI or docker); a file whose time cannot be read is the newest."""
    assert first_line_time(older) < first_line_time(newer)
