"""Decoding container log files into Elasticsearch documents.

The kubelet leaves one of two formats under /var/log/pods, detected per file:

- CRI (containerd, CRI-O): ``<RFC3339Nano> <stdout|stderr> <P|F> <body>``. A runtime
  splits lines longer than its buffer (16 KiB in containerd) into ``P`` parts ended by an
  ``F`` part. See the CRI logging design, kubernetes/design-proposals
  "kubelet-cri-logging.md", and containerd's ``pkg/cri/io/logger.go``.
- docker json-file: ``{"log": "...\\n", "stream": "stdout", "time": "..."}``. A ``log``
  without a trailing newline is a partial line (docker splits at 16 KiB too).

Partials are merged per stream: stdout and stderr parts interleave in one file. A merged
line longer than ``max_line_bytes`` is truncated and marked. Bytes that are not UTF-8 become
U+FFFD. A line in neither format is kept with its raw text and an ``error.message``.

Then, when a `Joiner` is given, the lines of a stack trace are joined into one document
per stream (`observer.agent.multiline`), marked ``log.flags: ["multiline"]``. A group still
open waits for its next line, or for `flush` once its stream has been quiet for a while.

Documents use the field names of Filebeat's Kubernetes integration (ECS), so existing
Kibana content works: ``@timestamp`` (the source's string, nanoseconds kept), ``message``,
``stream``, ``log.file.path``, ``log.offset``, ``log.flags``, ``kubernetes.*``,
``container.*``. Per-file metadata dicts are shared by every document of the file, never copied.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from observer.agent.checkpoint import Replay
from observer.agent.multiline import Emit, Joiner, rules_for
from observer.config import MultilineConfig
from observer.kube.annotations import NO_HINTS, CollectionHints, Parser

Document = dict[str, Any]

TRUNCATED_MARK = "…[truncated]"
"""Appended to a message cut at max_line_bytes, so a reader knows text is missing."""


_LOG_FILE_NAME = re.compile(r"(?P<restart>\d+)\.log(?:\.\d{8}-\d{6})?")
"""``<restart>.log``, or rotated by the kubelet: ``<restart>.log.<YYYYMMDD-hhmmss>``
(pkg/kubelet/logs/container_log_manager.go, timestampFormat). Other names (compressed
rotations, copies made by other tools) are not container logs to read."""


@dataclass(frozen=True, slots=True)
class Origin:
    """What a log file's path says: ``<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log``.

    The layout is the kubelet's (pkg/kubelet/kuberuntime/helpers.go,
    BuildContainerLogsDirectory). Namespaces and pod names cannot contain ``_``, so the
    directory splits unambiguously.
    """

    path: str
    namespace: str
    pod: str
    uid: str
    container: str
    restart_count: int

    @classmethod
    def from_path(cls, root: Path, path: Path) -> Origin | None:
        try:
            pod_directory, container, file_name = path.relative_to(root).parts
        except ValueError:
            return None
        namespace, _, rest = pod_directory.partition("_")
        pod, _, uid = rest.rpartition("_")
        name = _LOG_FILE_NAME.fullmatch(file_name)
        if not (namespace and pod and uid and name):
            return None
        return cls(str(path), namespace, pod, uid, container, int(name["restart"]))


@dataclass(slots=True)
class DecodeCounts:
    """What decoding had to repair; the agent's metrics read these."""

    lines: int = 0
    malformed: int = 0
    truncated: int = 0
    invalid_utf8: int = 0
    not_json: int = 0
    """Lines of a container annotated ``observer.dev/parser: json`` that were not JSON objects."""
    excluded: int = 0
    """Lines read but not sent: their container is annotated ``observer.dev/exclude``."""


@dataclass(slots=True)
class _Partial:
    offset: int
    timestamp: str
    parts: list[bytes] = field(default_factory=list)
    size: int = 0


class Decoder:
    """Decodes the complete lines of one file, in order, keeping partials between calls."""

    def __init__(
        self,
        origin: Origin,
        max_line_bytes: int,
        counts: DecodeCounts | None = None,
        joiner: Joiner | None = None,
    ):
        self.origin = origin
        self.max_line_bytes = max_line_bytes
        self.counts = counts if counts is not None else DecodeCounts()
        self.format: str | None = None
        self._pending: dict[str, _Partial] = {}
        self._joiner = joiner
        # The joiner's state and its start prefilter, bound once: every line checks them.
        self._joining: Collection[str] = joiner.groups if joiner else ()
        self._may_start: Callable[[bytes], bool] = (
            joiner.rules.may_start if joiner else _never_starts
        )
        self._now = 0.0
        self._file = {"path": origin.path}
        self._kubernetes = {
            "namespace": origin.namespace,
            "pod": {"name": origin.pod, "uid": origin.uid},
            "container": {"name": origin.container},
        }
        self._container = {"restart_count": origin.restart_count}
        self._replay: Replay | None = None
        # Lines before this offset may have been delivered already (see `replay`); 0: none.
        self._replay_until = 0
        # What the pod's observer.dev/* annotations ask (`steer`); the configured joiner is
        # kept to return to when an annotation goes away.
        self._hints = NO_HINTS
        self._configured_joiner = joiner
        self._excluded = False
        self._parser: Parser = "auto"
        self._carry: list[Document] = []
        """Documents of stack traces emitted when the joiner was swapped, sent next."""

    def steer(self, hints: CollectionHints, multiline: MultilineConfig) -> None:
        """Apply the pod's ``observer.dev/*`` annotations for this container (see
        `observer.kube.annotations`): exclusion, the body parser, the multiline joiner."""
        if hints == self._hints:
            return
        self._hints = hints
        self._parser = hints.parser
        if hints.exclude and not self._excluded:
            # What is held back would never be completed: it is excluded too.
            self._pending.clear()
            if self._joiner is not None:
                self._joiner.groups.clear()
            self._carry = []
        self._excluded = hints.exclude
        joiner = self._configured_joiner
        if hints.multiline is False:
            joiner = None
        elif hints.multiline:
            languages = hints.languages or tuple(multiline.languages)
            joiner = Joiner(
                rules_for(frozenset(languages)),
                multiline.max_lines,
                self.max_line_bytes,
                multiline.max_wait,
            )
        if joiner is not self._joiner:
            if self._joiner is not None and self._joiner.groups:
                emitted: list[Emit] = []
                self._joiner.flush(None, emitted)
                self._joined(emitted, self._carry)
            self._joiner = joiner
            self._joining = joiner.groups if joiner else ()
            self._may_start = joiner.rules.may_start if joiner else _never_starts

    def set_metadata(self, kubernetes: Document | None, container: Document | None) -> None:
        """Replace the per-file ``kubernetes`` and ``container`` parts of later documents with
        the pod's metadata; None: what the path says, marked ``kubernetes.metadata_missing``.

        New dicts, never changed in place: documents already made (queued, maybe being
        serialised) keep the parts they were made with.
        """
        if kubernetes is None or container is None:
            origin = self.origin
            kubernetes = {
                "namespace": origin.namespace,
                "pod": {"name": origin.pod, "uid": origin.uid},
                "container": {"name": origin.container},
                "metadata_missing": True,
            }
            container = {"restart_count": origin.restart_count}
        self._kubernetes = kubernetes
        self._container = container

    def resume_offset(self, end: int) -> int:
        """Where reading must restart to lose nothing: the oldest line not yet in a document
        (a pending partial, or the start of a stack trace still being joined), else `end`."""
        resume = min((partial.offset for partial in self._pending.values()), default=end)
        if self._joiner is not None:
            resume = min(resume, self._joiner.oldest_offset(default=resume))
        return resume

    def resume_point(self, end: int) -> tuple[int, Replay | None]:
        """`resume_offset`, and what reading again from there must skip: the other
        streams' lines after it, which are in documents already."""
        held = {stream: partial.offset for stream, partial in self._pending.items()}
        if self._joiner is not None:
            for stream, offset in self._joiner.oldest_offsets():
                held[stream] = min(offset, held.get(stream, offset))
        if not held:
            return end, None
        return min(held.values()), Replay(end, held)

    def replay(self, replay: Replay | None) -> None:
        """Reading restarts at a checkpoint with this `Replay`: skip what was delivered."""
        self._replay = replay
        self._replay_until = replay.until if replay else 0

    def _delivered(self, stream: str, offset: int) -> bool:
        """During a replay: whether this line of `stream` is in a document already."""
        replay = self._replay
        assert replay is not None
        return offset < replay.streams.get(stream, replay.until)

    @property
    def joining(self) -> bool:
        """A stack trace is being joined: `flush` will emit it once its stream is quiet (or
        one was finished when the joiner changed, and `flush` emits it now)."""
        return bool(self._carry) or (self._joiner is not None and bool(self._joiner.groups))

    def flush(self, now: float | None) -> list[Document]:
        """Stack traces whose stream had no line for the joiner's `max_wait` up to `now`;
        every one when `now` is None (the file is finished). Partials are kept: their
        closing part may still come, and the resume offset stays before them."""
        documents: list[Document] = self._carry
        self._carry = []
        if self._joiner is not None and self._joiner.groups:
            emitted: list[Emit] = []
            self._joiner.flush(now, emitted)
            self._joined(emitted, documents)
        return documents

    def decode(self, data: bytes, offset: int, now: float = 0.0) -> list[Document]:
        """Decode `data` (whole lines, each ending in a newline) that starts at byte `offset`.

        `now` (seconds, any monotonic clock) is when the data was read: a stack trace whose
        stream has been quiet for the joiner's `max_wait` by then is emitted at the end.
        """
        self._now = now
        if self._excluded:
            self.counts.excluded += data.count(b"\n")
            return []
        documents: list[Document] = self._carry
        self._carry = []
        position = offset
        for line in data.split(b"\n")[:-1]:
            line_offset = position
            position += len(line) + 1
            if not line:
                continue
            if self.format is None:
                self.format = "docker" if line.startswith(b"{") else "cri"
            if self.format == "cri":
                self._cri_line(line, line_offset, documents)
            else:
                self._docker_line(line, line_offset, documents)
        if self._joiner is not None and self._joiner.groups:
            documents += self.flush(now)
        return documents

    def _cri_line(self, line: bytes, offset: int, out: list[Document]) -> None:
        fields = line.split(b" ", 3)
        if (
            len(fields) < 3
            or fields[2] not in (b"F", b"P")
            or fields[1] not in (b"stdout", b"stderr")
        ):
            self._malformed(line, offset, "not a CRI log line", out)
            return
        body = fields[3] if len(fields) == 4 else b""
        self._part(
            fields[0].decode("ascii", "replace"),
            fields[1].decode(),
            body,
            fields[2] == b"P",
            offset,
            out,
        )

    def _docker_line(self, line: bytes, offset: int, out: list[Document]) -> None:
        try:
            entry = orjson.loads(line)
            text: str = entry["log"]
            stream: str = entry.get("stream", "stdout")
            timestamp: str = entry["time"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._malformed(line, offset, "not a docker json-file log line", out)
            return
        partial = not text.endswith("\n")
        body = text.encode() if partial else text[:-1].encode()
        self._part(timestamp, stream, body, partial, offset, out)

    def _part(
        self,
        timestamp: str,
        stream: str,
        body: bytes,
        partial: bool,
        offset: int,
        out: list[Document],
    ) -> None:
        if offset < self._replay_until and self._delivered(stream, offset):
            return
        pending = self._pending.get(stream)
        if pending is None and not partial:
            # The common case, inlined: a whole line, no stack trace on its way.
            if stream not in self._joining and not self._may_start(body):
                out.append(self._document(timestamp, stream, body, offset))
            else:
                self._line(timestamp, stream, body, offset, out)
            return
        if pending is None:
            pending = self._pending[stream] = _Partial(offset, timestamp)
        # Past the limit, parts are no longer kept: memory stays bounded whatever the input.
        if pending.size <= self.max_line_bytes:
            pending.parts.append(body)
        pending.size += len(body)
        if not partial:
            del self._pending[stream]
            self._line(pending.timestamp, stream, b"".join(pending.parts), pending.offset, out)

    def _line(
        self, timestamp: str, stream: str, body: bytes, offset: int, out: list[Document]
    ) -> None:
        """A whole line of a stream: a document now, or a part of a stack trace being joined."""
        joiner = self._joiner
        if joiner is None or (stream not in joiner.groups and not joiner.rules.may_start(body)):
            out.append(self._document(timestamp, stream, body, offset))
            return
        emitted: list[Emit] = []
        joiner.push(stream, timestamp, body, offset, self._now, emitted)
        if emitted:
            self._joined(emitted, out)

    def _joined(self, emitted: list[Emit], out: list[Document]) -> None:
        for stream, timestamp, body, offset, joined in emitted:
            out.append(self._document(timestamp, stream, body, offset, joined))

    def _document(
        self, timestamp: str, stream: str, body: bytes, offset: int, joined: bool = False
    ) -> Document:
        self.counts.lines += 1
        truncated = len(body) > self.max_line_bytes
        if truncated:
            body = body[: self.max_line_bytes]
            self.counts.truncated += 1
        try:
            message = body.decode()
        except UnicodeDecodeError:
            # A cut at the limit may split a character; only a real encoding error counts.
            message = body.decode(errors="replace")
            if not truncated or "\ufffd" in message[:-1]:
                self.counts.invalid_utf8 += 1
        document: Document = {
            "@timestamp": timestamp,
            "message": message,
            "stream": stream,
            "log": {"file": self._file, "offset": offset},
            "kubernetes": self._kubernetes,
            "container": self._container,
        }
        if truncated:
            document["message"] = message + TRUNCATED_MARK
            document["log"]["flags"] = ["truncated", "multiline"] if joined else ["truncated"]
        elif joined:
            document["log"]["flags"] = ["multiline"]
        elif self._parser == "auto":
            if message.startswith("{") and message.endswith("}"):
                parse_json_body(document, message)
        elif self._parser == "json" and not parse_json_body(document, message):
            document["error"] = {"message": "not a JSON object (observer.dev/parser: json)"}
            self.counts.not_json += 1
        return document

    def _malformed(self, line: bytes, offset: int, why: str, out: list[Document]) -> None:
        if offset < self._replay_until and self._delivered("", offset):
            return
        self.counts.malformed += 1
        self.counts.lines += 1
        out.append(
            {
                # The line has no time of its own; data streams require one: when it was read.
                "@timestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
                "message": line[: self.max_line_bytes].decode(errors="replace"),
                "log": {"file": self._file, "offset": offset},
                "kubernetes": self._kubernetes,
                "container": self._container,
                "error": {"message": why},
            }
        )


def _never_starts(body: bytes) -> bool:
    return False


_MESSAGE_KEYS = ("msg", "message", "log")
_LEVEL_KEYS = ("level", "severity", "lvl")
_TRACE_KEYS = ("trace_id", "traceId", "traceid")
_SPAN_KEYS = ("span_id", "spanId", "spanid")


def parse_json_body(document: Document, body: str) -> bool:
    """Lift the fields of a structured (JSON object) log line into ECS fields; False when
    the body is not a JSON object (the document is left as it was).

    The message, level, trace and span ids move to ``message``, ``log.level``,
    ``trace.id`` and ``span.id``; every other key stays under ``json`` so that no
    application key can collide with an ECS field.
    """
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(fields, dict):
        return False
    for key in _MESSAGE_KEYS:
        if isinstance(fields.get(key), str):
            document["message"] = fields.pop(key)
            break
    for key in _LEVEL_KEYS:
        if isinstance(fields.get(key), str):
            document["log"]["level"] = fields.pop(key).lower()
            break
    trace_id = _pop_hex_id(fields, _TRACE_KEYS, 32)
    if trace_id:
        document["trace"] = {"id": trace_id}
    span_id = _pop_hex_id(fields, _SPAN_KEYS, 16)
    if span_id:
        document["span"] = {"id": span_id}
    if fields:
        document["json"] = fields
    return True


def _pop_hex_id(fields: dict[str, Any], keys: tuple[str, ...], width: int) -> str | None:
    """A trace or span id in the lowercase hex form OpenTelemetry uses.

    64-bit B3 trace ids are left-padded to 128 bits, as the OpenTelemetry Zipkin receiver
    does, so that logs and traces join on the same string.
    """
    for key in keys:
        value = fields.get(key)
        if isinstance(value, str) and len(value) <= width and _HEX.fullmatch(value):
            del fields[key]
            return value.lower().rjust(width, "0")
    return None


_HEX = re.compile(r"[0-9a-fA-F]+")
"""Only hex digits: int(value, 16) would also take a sign, 0x, spaces and underscores."""
