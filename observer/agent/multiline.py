"""Joining the lines of a stack trace into one event, per stream of one file.

Runtimes print an uncaught exception as many lines; each becomes its own CRI or docker
line, so without joining a Java trace is fifty documents. The rules are a port of
Google's exception detector for GKE logging, fluent-plugin-detect-exceptions
(``lib/fluent/plugin/exception_detector.rb``): a state machine per language, with a start
rule and continuation rules per state. A line that matches no continuation of the current
state ends the group and is then considered afresh, so it may start the next one.

Deviations from the original, each to be more conservative or to fit real traces:

- Lines here have no trailing newline, so ``Exception`` ending a line is a start (Java
  prints ``java.lang.NullPointerException`` alone when there is no message).
- A group is joined only when a *confirming* line follows its start (a frame, ``Caused
  by:``, a goroutine header...). Lines that merely may belong (blank lines, ``During
  handling of the above exception...``) are held tentatively; if nothing confirming
  follows, they and the start are emitted as separate lines, exactly as written. So a
  lone ``Error: disk full`` never swallows the blank line after it.
- Python: modern tracebacks have caret lines (``    ^^^^``) and chained exceptions
  (``During handling of the above exception, another exception occurred:``); both are
  part of the trace. The exception line (``ValueError: bad``) ends it, or ``AssertionError``
  alone. A code line must be indented, so a log line after a File line is not eaten.
- Node.js: the same ``    at`` frames as Java (the original uses the Java rules for
  JavaScript), plus ``Error [ERR_CODE]:`` starts and the ``{ code: ..., }`` block that
  ``util.inspect`` prints after the last frame of an error with properties.
- Go: ``fatal error:`` (deadlocks, concurrent map writes) starts like ``panic:``; nested
  ``panic: ... [recovered]`` lines and ``...additional frames elided...`` continue.

A JSON body (``{...}``) is never a start or a continuation: structured loggers put their
traces inside one line already. A group is capped at ``max_lines`` and ``max_bytes``;
at a cap it is emitted and the trace continues as a new group in the same state.

Cost: a line with no pending group on its stream costs one check of its first byte and a
few substring searches (``Error``, ``Exception``, ``Throwable``, ``panic: ``, and prefixes)
before any regular expression runs; a group's state is checked only for lines that come
while it is open.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from observer.config import MultilineLanguage as Language

Line = tuple[str, bytes, int]
"""timestamp, body, offset of one (partial-merged) line of a stream."""

Emit = tuple[str, str, bytes, int, bool]
"""What the joiner hands back: stream, timestamp, body (lines joined by newlines), offset,
and whether lines were joined."""

_START = "start"

# (from states, pattern, to state, confirms). The start state's rules are the start rules.
_RuleSpec = tuple[tuple[str, ...], bytes, str, bool]

_RULES: dict[Language, list[_RuleSpec]] = {
    # fluent-plugin-detect-exceptions JAVA_RULES, which it also uses for JavaScript.
    "java": [
        ((_START,), rb"(?:Exception|Error|Throwable)(?::|$)", "stack_exception", False),
        (("stack_exception",), rb"^[\t ]*nested exception is:[\t ]*$", "stack_nested", False),
        (("stack_exception",), rb"^$", "stack_exception", False),
        (("stack_exception", "stack_frames"), rb"^[\t ]+(?:eval )?at ", "stack_frames", True),
        (
            ("stack_exception", "stack_frames"),
            rb"^[\t ]*(?:Caused by|Suppressed|Wrapped by):",
            "stack_exception",
            True,
        ),
        (
            ("stack_exception", "stack_frames"),
            rb"^[\t ]*\.\.\. \d+ (?:more|common frames omitted)$",
            "stack_frames",
            True,
        ),
        (("stack_nested",), rb"(?:Exception|Error|Throwable)(?::|$)", "stack_exception", True),
    ],
    # The same frames; Node's rules come first in a shared state, so that the frame that
    # opens an inspect block (``    at ... {``) is told apart from a plain frame.
    "node": [
        ((_START,), rb"Error(?: \[[A-Z0-9_]+\])?(?::|$)", "stack_exception", False),
        (("stack_exception", "stack_frames"), rb"^[\t ]+at .*\{$", "node_properties", True),
        (("stack_exception", "stack_frames"), rb"^[\t ]+(?:eval )?at ", "stack_frames", True),
        (("node_properties",), rb"^[\t ]+\S", "node_properties", True),
        (("node_properties",), rb"^\}$", "node_end", True),
    ],
    # PYTHON_RULES, with chained exceptions, caret lines and indented code lines.
    "python": [
        ((_START,), rb"^Traceback \(most recent call last\):$", "python", False),
        (("python", "python_code"), rb"^[\t ]+File ", "python_code", True),
        (("python", "python_code"), rb"^(?:[^\s.():]+\.)*[^\s.():]+(?::|$)", "python_end", True),
        (("python", "python_code"), rb"^[\t ]+\S", "python", True),
        (("python_end", "python_chain"), rb"^$", "python_chain", False),
        (
            ("python_end", "python_chain"),
            rb"^(?:During handling of the above exception, another exception occurred"
            rb"|The above exception was the direct cause of the following exception):$",
            "python_chain",
            False,
        ),
        (("python_chain",), rb"^Traceback \(most recent call last\):$", "python", True),
    ],
    # GO_RULES, with fatal errors, nested panics and elided frames.
    "go": [
        ((_START,), rb"\bpanic: |^fatal error: ", "go_panic", False),
        (("go_panic",), rb"^\[signal ", "go_signal", True),
        (("go_panic",), rb"^[\t ]+panic: ", "go_panic", True),
        (("go_panic", "go_signal", "go_frame"), rb"^$", "go_goroutine", False),
        (("go_goroutine",), rb"^goroutine \d+ (?:[^\[\]]* )?\[[^\]]+\]:$", "go_frame", True),
        (("go_frame",), rb"^(?:[^\s.:]+\.)*[^\s.():]+\(|^created by ", "go_location", True),
        (("go_frame",), rb"^\.\.\.additional frames elided\.\.\.$", "go_frame", True),
        (("go_location",), rb"^\s", "go_frame", True),
    ],
}

# Every start rule needs one of these in the line (or the line to begin with a prefix):
# the cheap test that spares the regular expressions for almost every line.
_NEEDLES: dict[Language, tuple[tuple[bytes, ...], tuple[bytes, ...]]] = {
    "java": ((b"Exception", b"Error", b"Throwable"), ()),
    "node": ((b"Error",), ()),
    "python": ((), (b"Traceback",)),
    "go": ((b"panic: ",), (b"fatal error: ",)),
}

_ORDER: tuple[Language, ...] = ("go", "python", "node", "java")
"""Order in which languages add their rules to a state; the first rule that matches wins."""


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: re.Pattern[bytes]
    to: str
    confirms: bool


class Rules:
    """The compiled state machine for a set of languages."""

    def __init__(self, languages: Iterable[Language]) -> None:
        chosen = set(languages)
        transitions: dict[str, list[_Rule]] = {}
        for language in _ORDER:
            if language not in chosen:
                continue
            for states, pattern, to, confirms in _RULES[language]:
                rule = _Rule(re.compile(pattern), to, confirms)
                for state in states:
                    rules = transitions.setdefault(state, [])
                    if not any(r.pattern.pattern == pattern and r.to == to for r in rules):
                        rules.append(rule)
        self.start = tuple(transitions.pop(_START, ()))
        self.transitions = {state: tuple(rules) for state, rules in transitions.items()}
        needles = tuple(n for lang in _ORDER if lang in chosen for n in _NEEDLES[lang][0])
        prefixes = tuple(p for lang in _ORDER if lang in chosen for p in _NEEDLES[lang][1])
        self.may_start = _prefilter(tuple(dict.fromkeys(needles)), prefixes)

    def begin(self, body: bytes) -> str | None:
        """The state a line starts, or None; only for lines that passed `may_start`."""
        for rule in self.start:
            if rule.pattern.search(body):
                return rule.to
        return None

    def follow(self, state: str, body: bytes) -> _Rule | None:
        for rule in self.transitions.get(state, ()):
            if rule.pattern.search(body):
                return rule
        return None

    def final(self, state: str) -> bool:
        """Nothing can follow: the group is complete (Node's closing brace)."""
        return state not in self.transitions


def _prefilter(needles: tuple[bytes, ...], prefixes: tuple[bytes, ...]) -> Callable[[bytes], bool]:
    """A test that every start line passes and almost no other line does, without regexes."""

    def may_start(body: bytes) -> bool:
        if body[:1] == b"{":
            return False
        for needle in needles:
            if needle in body:
                return True
        return bool(prefixes) and body.startswith(prefixes)

    return may_start


@functools.cache
def rules_for(languages: frozenset[Language]) -> Rules:
    """Compiled once per set of languages, shared by every file that uses it."""
    return Rules(languages)


@dataclass(slots=True)
class _Group:
    state: str
    lines: list[Line]
    size: int
    updated: float
    confirmed: int = 1
    """Lines up to and including the last confirming one: what will be joined."""


@dataclass(slots=True)
class Joiner:
    """Groups the lines of each stream of one file into stack traces.

    `push` takes every line of a stream that is pending or `may_start`; lines of other
    streams never affect a stream's group (stdout and stderr interleave in one file).
    """

    rules: Rules
    max_lines: int
    max_bytes: int
    max_wait: float
    groups: dict[str, _Group] = field(default_factory=dict)

    def oldest_offset(self, default: int) -> int:
        """The offset of the first line of the oldest trace being joined, else `default`."""
        return min((group.lines[0][2] for group in self.groups.values()), default=default)

    def oldest_offsets(self) -> Iterator[tuple[str, int]]:
        """Per stream, the offset of the first line of the trace being joined."""
        for stream, group in self.groups.items():
            yield stream, group.lines[0][2]

    def push(
        self, stream: str, timestamp: str, body: bytes, offset: int, now: float, out: list[Emit]
    ) -> None:
        """Add a line of `stream`; what is complete is appended to `out`, in order."""
        rules = self.rules
        group = self.groups.get(stream)
        if group is not None:
            rule = None
            if body[:1] != b"{" and len(body) <= self.max_bytes:
                rule = rules.follow(group.state, body)
            if rule is None:
                del self.groups[stream]
                _emit(stream, group, out)
            elif len(group.lines) >= self.max_lines or group.size + 1 + len(body) > self.max_bytes:
                # At a cap: emit what is held; the trace goes on as a new group.
                group.confirmed = len(group.lines)
                _emit(stream, group, out)
                self.groups[stream] = _Group(rule.to, [(timestamp, body, offset)], len(body), now)
                return
            else:
                group.lines.append((timestamp, body, offset))
                group.size += 1 + len(body)
                group.updated = now
                group.state = rule.to
                if rule.confirms:
                    group.confirmed = len(group.lines)
                if rules.final(rule.to):
                    del self.groups[stream]
                    _emit(stream, group, out)
                return
        state = rules.begin(body) if len(body) <= self.max_bytes and rules.may_start(body) else None
        if state is None:
            out.append((stream, timestamp, body, offset, False))
        else:
            self.groups[stream] = _Group(state, [(timestamp, body, offset)], len(body), now)

    def flush(self, now: float | None, out: list[Emit]) -> None:
        """Emit groups with no line for `max_wait` up to `now`; every group when `now` is None."""
        for stream, group in list(self.groups.items()):
            if now is None or now - group.updated >= self.max_wait:
                del self.groups[stream]
                _emit(stream, group, out)


def _emit(stream: str, group: _Group, out: list[Emit]) -> None:
    """The confirmed lines as one event; tentative lines after them as written, one by one."""
    lines = group.lines
    confirmed = group.confirmed
    if confirmed > 1:
        timestamp, _, offset = lines[0]
        body = b"\n".join(line[1] for line in lines[:confirmed])
        out.append((stream, timestamp, body, offset, True))
    else:
        confirmed = 0
    for timestamp, body, offset in lines[confirmed:]:
        out.append((stream, timestamp, body, offset, False))
