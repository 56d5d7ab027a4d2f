"""What the kubelet's Event messages say, as fields: the probe, its failure, the status code.

The texts are the kubelet's own (Kubernetes 1.30):

- pkg/kubelet/prober/prober.go: ``<Kind> probe failed: <output>`` (reason ``Unhealthy``),
  ``<Kind> probe errored: <error>`` (``Unhealthy``: the probe could not be run),
  ``<Kind> probe warning: <output>`` (``ProbeWarning``); Kind is ``Liveness``,
  ``Readiness`` or ``Startup``.
- The probe's output (pkg/probe): HTTP ``HTTP probe failed with statuscode: <code>``, or the
  client's error ``Get "<url>": dial tcp <addr>: connect: connection refused``; TCP
  ``dial tcp <addr>: ...``; gRPC ``service unhealthy (responded with "NOT_SERVING")`` and
  ``timeout: ...`` texts; exec probes report the command's output, without its exit code.
- pkg/kubelet/kuberuntime/kuberuntime_container.go: ``Killing`` with ``Stopping container
  <name>`` or ``Container <name> failed liveness probe, will be restarted``; lifecycle
  hooks fail with ``... command '<cmd>' exited with <code>: ...``.
- ``BackOff``: ``Back-off restarting failed container <name> in pod <pod>`` or
  ``Back-off pulling image "<image>"``.
- pkg/kubelet/oom: ``SystemOOM`` on the Node, ``System OOM encountered, victim process:
  <name>, pid: <pid>``.

A message that matches nothing known keeps its reason and text, and no parsed fields.
"""

from __future__ import annotations

import re
from typing import Any

Fields = dict[str, Any]

_PROBE = re.compile(r"(Liveness|Readiness|Startup) probe (failed|errored|warning): ?(.*)", re.S)
_HTTP_STATUS = re.compile(r"HTTP probe failed with statuscode: (\d{3})\b")
_HTTP_CLIENT_ERROR = re.compile(r'(?:Get|Head|Post) "https?://')
_TCP = re.compile(r"dial tcp \S+: ")
_GRPC = re.compile(
    r'service unhealthy \(responded with "|timeout: failed to connect service |'
    r"timeout: health rpc did not complete |"
    r"error: this server does not implement the grpc health protocol"
)
_EXIT_CODE = re.compile(r"exited with (?:code |status )?(\d+)")
_KILLED_FOR_PROBE = re.compile(r"Container \S+ failed (liveness|startup) probe")
_SYSTEM_OOM = re.compile(r"System OOM encountered(?:, victim process: ([^,]+), pid: (\d+))?")

PROBE_KINDS = ("liveness", "readiness", "startup")

ACTION_PROBE_FAILED = "probe_failed"
ACTION_PROBE_ERRORED = "probe_errored"
ACTION_PROBE_WARNING = "probe_warning"
ACTION_KILLED = "container_killed"
ACTION_RESTART_BACKOFF = "restart_backoff"
ACTION_IMAGE_PULL_BACKOFF = "image_pull_backoff"
ACTION_SYSTEM_OOM = "system_oom"
ACTION_RESTARTED = "container_restarted"
ACTION_OOM_KILLED = "container_oom_killed"


def parse_kubelet_message(reason: str, message: str) -> Fields:
    """The ECS fields a kubelet Event's message tells, beside its reason; {} if none.

    ``event.action`` names what happened (``probe_failed``, ``container_killed``...);
    ``probe.kind``, ``probe.result`` and ``probe.type`` (http, tcp, grpc) describe a probe;
    ``error.message`` holds a probe's failure text; ``http.response.status_code`` and
    ``process.exit_code`` are set when the message gives them.
    """
    fields: Fields = {}
    probe = _PROBE.match(message)
    if probe is not None and reason in ("Unhealthy", "ProbeWarning"):
        kind, result, output = probe.groups()
        action = {
            "failed": ACTION_PROBE_FAILED,
            "errored": ACTION_PROBE_ERRORED,
            "warning": ACTION_PROBE_WARNING,
        }[result]
        fields["event"] = {"action": action}
        fields["probe"] = {"kind": kind.lower(), "result": result}
        if output:
            fields["error"] = {"message": output}
        probe_type = _probe_type(output)
        if probe_type:
            fields["probe"]["type"] = probe_type
        status = _HTTP_STATUS.match(output)
        if status is not None:
            fields["http"] = {"response": {"status_code": int(status[1])}}
    elif reason == "Killing":
        fields["event"] = {"action": ACTION_KILLED}
        killed_for = _KILLED_FOR_PROBE.match(message)
        if killed_for is not None:
            fields["probe"] = {"kind": killed_for[1], "result": "failed"}
    elif reason == "BackOff":
        if message.startswith("Back-off restarting failed container"):
            fields["event"] = {"action": ACTION_RESTART_BACKOFF}
        elif message.startswith("Back-off pulling image"):
            fields["event"] = {"action": ACTION_IMAGE_PULL_BACKOFF}
    elif reason == "SystemOOM":
        fields["event"] = {"action": ACTION_SYSTEM_OOM}
        oom = _SYSTEM_OOM.match(message)
        if oom is not None and oom[1]:
            fields["process"] = {"name": oom[1], "pid": int(oom[2])}
    exit_code = _EXIT_CODE.search(message)
    if exit_code is not None:
        fields.setdefault("process", {})["exit_code"] = int(exit_code[1])
    return fields


def _probe_type(output: str) -> str | None:
    """http, tcp or grpc when the output is one of those probers' texts; None otherwise
    (exec probes print whatever the command printed)."""
    if output.startswith("HTTP probe failed") or _HTTP_CLIENT_ERROR.match(output):
        return "http"
    if _TCP.match(output):
        return "tcp"
    if _GRPC.match(output):
        return "grpc"
    return None
