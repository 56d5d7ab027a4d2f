"""Joining stack traces into one document: the rules per runtime, from real-world samples."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from observer.agent.decode import Decoder, Document, Origin
from observer.agent.multiline import Joiner, rules_for
from observer.agent.tail import multiline_joiner
from observer.config import ConfigError, MultilineLanguage, PodLogsConfig, parse

ROOT = Path("/var/log/pods")
PATH = ROOT / "shop_checkout-7d9f8-x2x_0f9e8d7c-1111-2222-3333-444455556666" / "app" / "0.log"
ALL: tuple[MultilineLanguage, ...] = ("java", "python", "go", "node")


def origin(path: Path = PATH) -> Origin:
    found = Origin.from_path(ROOT, path)
    assert found is not None
    return found


def joiner(
    languages: tuple[MultilineLanguage, ...] = ALL,
    max_lines: int = 500,
    max_bytes: int = 1 << 20,
    max_wait: float = 1.0,
) -> Joiner:
    return Joiner(rules_for(frozenset(languages)), max_lines, max_bytes, max_wait)


def decoder(**settings: object) -> Decoder:
    return Decoder(origin(), 1 << 20, joiner=joiner(**settings))  # type: ignore[arg-type]


def cri(text: str, stream: str = "stdout") -> bytes:
    """Each line of `text` as a CRI line, as containerd writes a program's output."""
    return b"".join(
        f"2026-11-21T10:15:42.{n:09d}Z {stream} F {line}\n".encode()
        for n, line in enumerate(text.split("\n"))
    )


def messages(documents: list[Document]) -> list[str]:
    return [document["message"] for document in documents]


def joined(text: str) -> str:
    return text.strip("\n")


# --- samples, as the runtimes print them ------------------------------------------------

SPRING_LOG_LINE = (
    "2026-11-21 10:15:42.123 ERROR 1 --- [nio-8080-exec-3] o.a.c.c.C.[.[.[/].[dispatcherServlet]"
    "    : Servlet.service() for servlet [dispatcherServlet] threw exception"
)
JAVA_CAUSED_BY = """
java.lang.IllegalStateException: Order 8231 has no payment
\tat com.example.shop.OrderService.checkout(OrderService.java:87)
\tat com.example.shop.OrderController.submit(OrderController.java:42)
\tat java.base/jdk.internal.reflect.NativeMethodAccessorImpl.invoke0(Native Method)
Caused by: com.example.payments.GatewayException: upstream timed out after 3000 ms
\tat com.example.payments.GatewayClient.charge(GatewayClient.java:120)
\tat com.example.shop.OrderService.checkout(OrderService.java:80)
\t... 12 more
"""
JAVA_SUPPRESSED = """
Exception in thread "main" java.lang.RuntimeException: close failed
\tat Main.main(Main.java:10)
\tSuppressed: java.io.IOException: disk gone
\t\tat Main$Resource.close(Main.java:20)
\t\tat Main.main(Main.java:8)
"""
JAVA_NO_MESSAGE = """
java.lang.NullPointerException
\tat com.example.Cart.total(Cart.java:31)
\tat com.example.Cart.lambda$checkout$0(Cart.java:18)
"""
JAVA_ERROR_CAUSED_BY = """
java.lang.AssertionError: expected 3 items
\tat org.junit.Assert.fail(Assert.java:89)
Caused by: java.lang.IllegalStateException: cart closed
\t... 3 more
"""
PYTHON_CHAINED = """
Traceback (most recent call last):
  File "/app/worker.py", line 12, in handle
    payload = json.loads(body)
              ^^^^^^^^^^^^^^^^
  File "/usr/local/lib/python3.12/json/__init__.py", line 346, in loads
    return _default_decoder.decode(s)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^
json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/app/worker.py", line 14, in handle
    raise ValueError("bad payload")
ValueError: bad payload
"""
PYTHON_ASSERT = """
Traceback (most recent call last):
  File "/app/check.py", line 3, in <module>
    assert ready
AssertionError
"""
GO_PANIC = """
panic: runtime error: invalid memory address or nil pointer dereference
[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x4a1b2c]

goroutine 1 [running]:
main.(*Server).handle(0x0, {0x5b8e20, 0xc000012345})
\t/app/server.go:42 +0x2c
main.main()
\t/app/main.go:17 +0x85

goroutine 18 [IO wait]:
internal/poll.runtime_pollWait(0x7f3c2a1b0e58, 0x72)
\t/usr/local/go/src/runtime/netpoll.go:343 +0x85
created by net/http.(*Server).Serve in goroutine 1
\t/usr/local/go/src/net/http/server.go:3086 +0x5cb
"""
GO_DEADLOCK = """
fatal error: all goroutines are asleep - deadlock!

goroutine 1 [chan receive]:
main.main()
\t/app/main.go:9 +0x2d
"""
NODE_TYPE_ERROR = """
TypeError: Cannot read properties of undefined (reading 'id')
    at getUser (/app/src/users.js:14:22)
    at async Promise.all (index 0)
    at async /app/src/server.js:31:5
"""
NODE_WITH_PROPERTIES = """
Error: connect ECONNREFUSED 10.0.0.7:5432
    at TCPConnectWrap.afterConnect [as oncomplete] (node:net:1555:16) {
  errno: -111,
  code: 'ECONNREFUSED',
  syscall: 'connect',
  address: '10.0.0.7',
  port: 5432
}
"""
NODE_CODED = """
Error [ERR_MODULE_NOT_FOUND]: Cannot find package 'express' imported from /app/index.mjs
    at new NodeError (node:internal/errors:405:5)
    at packageResolve (node:internal/modules/esm/resolve:916:9)
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            f"{SPRING_LOG_LINE}\n{joined(JAVA_CAUSED_BY)}\nGET /orders/8232 200",
            [SPRING_LOG_LINE, joined(JAVA_CAUSED_BY), "GET /orders/8232 200"],
            id="java-caused-by-after-a-log-line",
        ),
        pytest.param(
            f"{joined(JAVA_SUPPRESSED)}\nshutting down",
            [joined(JAVA_SUPPRESSED), "shutting down"],
            id="java-suppressed",
        ),
        pytest.param(
            f"{joined(JAVA_NO_MESSAGE)}\nnext",
            [joined(JAVA_NO_MESSAGE), "next"],
            id="java-exception-without-message",
        ),
        pytest.param(
            f"{joined(JAVA_ERROR_CAUSED_BY)}\nnext",
            [joined(JAVA_ERROR_CAUSED_BY), "next"],
            id="java-error-that-node-rules-also-start",
        ),
        pytest.param(
            f"ERROR:worker:job 17 failed\n{joined(PYTHON_CHAINED)}\nINFO:worker:next job",
            ["ERROR:worker:job 17 failed", joined(PYTHON_CHAINED), "INFO:worker:next job"],
            id="python-chained",
        ),
        pytest.param(
            f"{joined(PYTHON_ASSERT)}\nbye",
            [joined(PYTHON_ASSERT), "bye"],
            id="python-exception-without-message",
        ),
        pytest.param(
            f"{joined(PYTHON_ASSERT)}\n\nbye",
            [joined(PYTHON_ASSERT), "", "bye"],
            id="python-blank-line-after-is-not-part",
        ),
        pytest.param(
            f"{joined(GO_PANIC)}\n2026/11/21 10:15:43 restarting",
            [joined(GO_PANIC), "2026/11/21 10:15:43 restarting"],
            id="go-panic-goroutine-dump",
        ),
        pytest.param(
            f"{joined(GO_DEADLOCK)}\nnext",
            [joined(GO_DEADLOCK), "next"],
            id="go-fatal-error",
        ),
        pytest.param(
            f"{joined(NODE_TYPE_ERROR)}\nGET /health 200 1.203 ms - 2",
            [joined(NODE_TYPE_ERROR), "GET /health 200 1.203 ms - 2"],
            id="node-type-error",
        ),
        pytest.param(
            f"{joined(NODE_WITH_PROPERTIES)}\nserver listening on :3000",
            [joined(NODE_WITH_PROPERTIES), "server listening on :3000"],
            id="node-error-properties",
        ),
        pytest.param(
            f"{joined(NODE_CODED)}\nnext",
            [joined(NODE_CODED), "next"],
            id="node-error-with-code",
        ),
        pytest.param(
            f"{joined(JAVA_NO_MESSAGE)}\n{joined(NODE_TYPE_ERROR)}",
            [joined(JAVA_NO_MESSAGE), joined(NODE_TYPE_ERROR)],
            id="a-trace-right-after-another",
        ),
    ],
)
def test_stack_traces_become_one_document(text: str, expected: list[str]) -> None:
    """Each runtime's trace is one message; lines around it stay their own documents."""
    d = decoder()
    documents = d.decode(cri(text), 0) + d.flush(None)
    assert messages(documents) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("ERROR: disk full\nretrying in 5s", id="error-level-word"),
        pytest.param("Error: disk full\nretrying in 5s", id="error-line-without-frames"),
        pytest.param("Error: config missing\n\nstarting anyway", id="blank-line-after-error"),
        pytest.param("    indented one\n    indented two", id="indented-lines"),
        pytest.param("    at the moment\n  at all", id="frames-without-a-start"),
        pytest.param("Traceback (most recent call last):\nnot a frame", id="python-header-only"),
        pytest.param("panic: boom\n\nnot a goroutine", id="go-panic-without-dump"),
        pytest.param("panic: boom\nnext", id="go-panic-alone"),
        pytest.param("TypeError: x\nat the end, no indent", id="node-unindented-at"),
        pytest.param(
            '{"level":"error","msg":"java.lang.Exception: boom"}\n\tat com.x.Y(Y.java:1)',
            id="json-line-never-starts",
        ),
        pytest.param(
            'TypeError: boom\n{"level":"info","msg":"    at noon"}', id="json-line-never-continues"
        ),
    ],
)
def test_unrelated_lines_are_never_joined(text: str) -> None:
    """Lines that only look like the start or the middle of a trace stay as written."""
    d = decoder()
    documents = d.decode(cri(text), 0) + d.flush(None)
    assert len(documents) == len(text.split("\n"))
    assert all("flags" not in document["log"] for document in documents)


def test_joined_document_has_the_first_lines_timestamp_offset_and_a_flag() -> None:
    """The event keeps the first line's timestamp and offset and says log.flags: multiline."""
    data = cri("before\n" + joined(JAVA_NO_MESSAGE) + "\nafter")
    _, trace, _ = decoder().decode(data, 1000)
    assert trace["@timestamp"] == "2026-11-21T10:15:42.000000001Z"
    assert trace["log"]["offset"] == 1000 + data.index(b"2026-11-21T10:15:42.000000001Z")
    assert trace["log"]["flags"] == ["multiline"]
    assert trace["stream"] == "stdout"


def test_stdout_and_stderr_are_joined_separately() -> None:
    """A trace on stderr is joined across stdout lines interleaved with it, in per-stream order."""
    trace = joined(JAVA_CAUSED_BY).split("\n")
    data = b""
    for n, line in enumerate(trace):
        data += cri(line, "stderr") + cri(f"request {n}", "stdout")
    data += cri("done", "stderr")
    documents = decoder().decode(data, 0)
    by_stream: dict[str, list[str]] = {"stdout": [], "stderr": []}
    for document in documents:
        by_stream[document["stream"]].append(document["message"])
    assert by_stream == {
        "stdout": [f"request {n}" for n in range(len(trace))],
        "stderr": [joined(JAVA_CAUSED_BY), "done"],
    }


def test_trace_split_across_reads_is_joined_and_holds_the_resume_offset() -> None:
    """A trace cut by the end of a read waits for the rest; resuming restarts at its first line."""
    d = decoder()
    first = cri("before\n" + "\n".join(joined(JAVA_CAUSED_BY).split("\n")[:4]))
    second = cri("\n".join(joined(JAVA_CAUSED_BY).split("\n")[4:]) + "\nafter")
    assert messages(d.decode(first, 0)) == ["before"]
    trace_start = len(cri("before"))
    assert d.resume_offset(len(first)) == trace_start
    assert messages(d.decode(second, len(first))) == [joined(JAVA_CAUSED_BY), "after"]
    assert d.resume_offset(len(first) + len(second)) == len(first) + len(second)


def test_resume_offset_is_the_oldest_of_partials_and_traces() -> None:
    """A pending trace on one stream and a pending partial on the other: resume at the older."""
    d = decoder()
    trace = cri("java.lang.NullPointerException", "stderr")
    partial = b"2026-11-21T10:15:43Z stdout P half a line\n"
    d.decode(trace + partial, 0)
    assert d.resume_offset(len(trace) + len(partial)) == 0


def test_quiet_stream_is_flushed_after_max_wait() -> None:
    """A trace with no new line for max_wait is emitted by flush, not before."""
    d = decoder(max_wait=1.0)
    assert d.decode(cri(joined(PYTHON_ASSERT)), 0, now=10.0) == []
    assert d.flush(10.5) == []
    assert d.joining
    assert messages(d.flush(11.0)) == [joined(PYTHON_ASSERT)]
    assert not d.joining


def test_quiet_stream_is_flushed_while_the_other_stream_writes() -> None:
    """A trace on a quiet stderr is emitted after max_wait even when stdout keeps the file busy."""
    d = decoder(max_wait=1.0)
    assert d.decode(cri(joined(JAVA_NO_MESSAGE), "stderr"), 0, now=10.0) == []
    assert messages(d.decode(cri("tick", "stdout"), 500, now=10.4)) == ["tick"]
    assert messages(d.decode(cri("tock", "stdout"), 600, now=11.2)) == [
        "tock",
        joined(JAVA_NO_MESSAGE),
    ]


def test_flush_emits_tentative_lines_as_written() -> None:
    """A start line and blank lines that nothing confirmed come out one by one."""
    d = decoder()
    d.decode(cri("Error: boom\n"), 0, now=1.0)
    assert messages(d.flush(None)) == ["Error: boom", ""]


def test_max_lines_splits_a_long_trace_into_pieces() -> None:
    """A trace longer than max_lines is emitted in pieces of max_lines, each still joined."""
    lines = ["java.lang.StackOverflowError"] + [
        f"\tat Recursive.call(R.java:{n})" for n in range(7)
    ]
    documents = decoder(max_lines=3).decode(cri("\n".join(lines) + "\nafter"), 0)
    assert messages(documents) == [
        "\n".join(lines[0:3]),
        "\n".join(lines[3:6]),
        "\n".join(lines[6:8]),
        "after",
    ]
    assert [d["log"].get("flags") for d in documents] == [["multiline"]] * 3 + [None]


def test_max_bytes_caps_a_trace() -> None:
    """A trace is emitted before it would pass max_bytes (the line limit), never truncated."""
    lines = ["java.lang.IllegalStateException: x"] + [f"\tat A.b(A.java:{n})" for n in range(4)]
    limit = len("\n".join(lines[:3]))
    documents = decoder(max_bytes=limit).decode(cri("\n".join(lines) + "\nafter"), 0)
    assert messages(documents) == ["\n".join(lines[:3]), "\n".join(lines[3:]), "after"]


def test_languages_limit_the_rules() -> None:
    """With only Python enabled, a Java trace stays line by line and a Python one is joined."""
    d = decoder(languages=("python",))
    documents = d.decode(cri(joined(JAVA_NO_MESSAGE) + "\n" + joined(PYTHON_ASSERT) + "\nx"), 0)
    assert messages(documents) == [*joined(JAVA_NO_MESSAGE).split("\n"), joined(PYTHON_ASSERT), "x"]


def test_docker_json_file_traces_are_joined_too() -> None:
    """Lines of docker's json-file format are joined after their partials are merged."""
    lines = [*joined(PYTHON_ASSERT).split("\n"), "bye"]
    data = b"".join(
        orjson.dumps({"log": line + "\n", "stream": "stderr", "time": "t"}) + b"\n"
        for line in lines
    )
    assert messages(decoder().decode(data, 0)) == [joined(PYTHON_ASSERT), "bye"]


def test_a_line_longer_than_the_limit_is_never_joined() -> None:
    """A line past max_bytes (to be truncated) ends a trace and does not start one."""
    d = decoder(max_bytes=64)
    long_start = "java.lang.IllegalStateException: " + "x" * 100
    documents = d.decode(cri(f"{long_start}\n\tat A.b(A.java:1)"), 0)
    assert messages(documents) == [long_start, "\tat A.b(A.java:1)"]


# --- configuration ------------------------------------------------------------------------


def settings(multiline: dict[str, object]) -> PodLogsConfig:
    return PodLogsConfig.model_validate({"multiline": multiline})


def test_multiline_is_on_by_default_for_every_language() -> None:
    """Without configuration, every file joins Java, Python, Go and Node.js traces."""
    found = multiline_joiner(PodLogsConfig(), origin())
    assert found is not None
    assert found.rules is rules_for(frozenset(ALL))
    assert (found.max_lines, found.max_wait) == (500, 1.0)


def test_multiline_can_be_switched_off() -> None:
    """enabled: false gives files no joiner at all."""
    assert multiline_joiner(settings({"enabled": False}), origin()) is None


def test_first_matching_override_decides_per_namespace_and_container() -> None:
    """Overrides match like include/exclude globs; the first match wins, unset keys inherit."""
    configured = settings(
        {
            "max_wait": "250ms",
            "overrides": [
                {"namespaces": ["legacy-*"], "enabled": False},
                {"namespaces": ["shop"], "containers": ["app"], "languages": ["java"]},
                {"namespaces": ["shop"], "enabled": False},
            ],
        }
    )
    legacy = origin(ROOT / "legacy-billing_pod_uid" / "app" / "0.log")
    shop_app = origin(ROOT / "shop_pod_uid" / "app" / "0.log")
    shop_proxy = origin(ROOT / "shop_pod_uid" / "proxy" / "0.log")
    other = origin(ROOT / "web_pod_uid" / "app" / "0.log")
    assert multiline_joiner(configured, legacy) is None
    app = multiline_joiner(configured, shop_app)
    assert app is not None
    assert app.rules is rules_for(frozenset({"java"}))
    assert app.max_wait == 0.25
    assert multiline_joiner(configured, shop_proxy) is None
    web = multiline_joiner(configured, other)
    assert web is not None
    assert web.rules is rules_for(frozenset(ALL))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "sources: {pod_logs: {multiline: {languages: [java, cobol]}}}",
            "sources.pod_logs.multiline.languages[1]: input should be 'java', 'python', 'go' or 'node', got 'cobol'",
        ),
        (
            "sources: {pod_logs: {multiline: {overrides: [{enabled: false}]}}}",
            "sources.pod_logs.multiline.overrides[0]: an override needs namespaces, pods or containers to match",
        ),
        (
            "sources: {pod_logs: {multiline: {overrides: [{pods: [web-*]}]}}}",
            "sources.pod_logs.multiline.overrides[0]: an override sets enabled or languages",
        ),
        (
            "sources: {pod_logs: {multiline: {max_lines: 1}}}",
            "sources.pod_logs.multiline.max_lines: Input should be greater than or equal to 2",
        ),
    ],
)
def test_multiline_configuration_errors(text: str, expected: str) -> None:
    """Mistakes in the multiline section name their key path."""
    from observer.config import AgentConfig

    with pytest.raises(ConfigError) as raised:
        parse(AgentConfig, text, env={})
    assert raised.value.problems == [expected]
