"""Typed configuration for both deployables, and the one way it is loaded and validated.

One YAML file per deployable (`agent.yaml`, `collector.yaml`). Every default lives in the
models below; the shipped files under `agent/` and `collector/` only restate them for
readers. Loading is strict: unknown keys are errors that list the allowed keys, and every
error in a file is reported at once with its key path, e.g.
``sinks.elasticsearch.hosts[0]: not a URL: 'localhost:92OO'``.

String values may reference secrets and environment: ``${NAME}``, ``${NAME:-default}``
and ``${file:/path/to/secret}`` (trailing newline stripped, as Kubernetes secret volumes
and most editors leave one). ``$${`` is a literal ``${``. Interpolation happens after YAML
parsing, so a secret can hold any character without breaking the YAML around it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError


class ConfigError(Exception):
    """A configuration file that cannot be used; `problems` holds one line per mistake."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


# --- value types -------------------------------------------------------------------------


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise PydanticCustomError("url", "not a URL: {value}", {"value": repr(value)})
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]


def _listen_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise PydanticCustomError(
            "listen", "not a listen address host:port: {value}", {"value": repr(value)}
        )
    return f"{host or '0.0.0.0'}:{port}"  # noqa: S104 - an empty host means every interface


ListenAddress = Annotated[str, AfterValidator(_listen_address)]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def _seconds(value: object) -> object:
    """Durations are written the way Kubernetes and Prometheus users write them: 500ms, 5s, 1m."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise PydanticCustomError(
                "duration", "not a duration like 500ms, 5s, 2m, 7d: {value}", {"value": repr(value)}
            )
        return float(match[1]) * _DURATION_UNITS[match[2]]
    return value


Seconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0)]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 10**3,
    "KiB": 2**10,
    "MB": 10**6,
    "MiB": 2**20,
    "GB": 10**9,
    "GiB": 2**30,
}


def _bytes(value: object) -> object:
    if isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise PydanticCustomError(
                "size", "not a size like 512KiB, 5MB: {value}", {"value": repr(value)}
            )
        return int(float(match[1]) * _SIZE_UNITS[match[2]])
    return value


ByteSize = Annotated[int, BeforeValidator(_bytes), Field(ge=0)]

LogLevel = Literal["debug", "info", "warning", "error"]

_DATA_STREAM_PART = re.compile(r"^[a-z0-9][a-z0-9._]*$")


def _data_stream_part(value: str) -> str:
    if not _DATA_STREAM_PART.match(value):
        raise PydanticCustomError(
            "data_stream_part",
            "lowercase letters, digits, '.' and '_' only (no '-'): {value}",
            {"value": repr(value)},
        )
    return value


DataStreamPart = Annotated[str, AfterValidator(_data_stream_part)]


def _data_stream_name(value: str) -> str:
    parts = value.split("-")
    if len(parts) != 3 or not all(_DATA_STREAM_PART.match(part) for part in parts):
        raise PydanticCustomError(
            "data_stream_name",
            "not a data stream name <type>-<dataset>-<namespace>: {value}",
            {"value": repr(value)},
        )
    return value


DataStreamName = Annotated[str, AfterValidator(_data_stream_name)]


class Section(BaseModel):
    """Every configuration section: unknown keys are errors, values are checked as assigned."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sections shared by both deployables -------------------------------------------------


class TelemetryConfig(Section):
    """The deployable's own /metrics, /healthz and /readyz endpoint."""

    listen: ListenAddress = "0.0.0.0:9464"
    log_level: LogLevel = "info"


class TlsConfig(Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise PydanticCustomError("tls_pair", "cert_file and key_file must be given together")
        return self


class ServerTlsConfig(Section):
    """TLS on a receiver's port. With `client_ca_file`, every sender must present a
    certificate signed by it (mutual TLS). The files are read when the receiver starts."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


class ElasticsearchConfig(Section):
    """Where documents go. Several hosts give failover; auth is basic, API key or a client cert."""

    hosts: list[HttpUrl] = Field(
        default_factory=lambda: ["http://elasticsearch:9200"], min_length=1
    )
    username: str | None = None
    password: str | None = None
    api_key: str | None = None
    tls: TlsConfig = TlsConfig()
    request_timeout: Seconds = 30.0

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> ElasticsearchConfig:
        if (self.username is None) != (self.password is None):
            raise PydanticCustomError("auth", "username and password must be given together")
        if self.api_key is not None and self.username is not None:
            raise PydanticCustomError("auth", "give either api_key or username/password, not both")
        return self


class KubernetesConfig(Section):
    """How to reach the API server: a kubeconfig file, or the pod's service account when unset.

    With `enabled` the agent keeps a cache of this node's pods and the namespaces, and adds
    their metadata to every log record. Without credentials (no kubeconfig and not running
    in a pod) it says so once and runs on what the log paths tell.
    """

    enabled: bool = True
    kubeconfig: Path | None = None
    context: str | None = None
    deleted_pod_grace: Seconds = 300.0
    """How long a deleted pod's metadata stays in the cache, for lines read after it; its
    series on /metrics (and its workload's, once every file of it is closed) stay as long."""
    annotations: list[str] = []
    """Pod annotations copied to ``kubernetes.annotations.*`` (exact keys); none by default."""


# --- the deployables ---------------------------------------------------------------------


class FileSinkConfig(Section):
    """One JSON document per line: exactly what would be indexed in Elasticsearch."""

    path: Path


class DataStreamConfig(Section):
    """Where log documents are written: the data stream ``<type>-<dataset>-<namespace>``."""

    type: Literal["logs"] = "logs"
    dataset: DataStreamPart = "kubernetes.container"
    namespace: DataStreamPart = "default"
    namespace_from: str | None = None
    """A document field (dotted path, e.g. ``kubernetes.namespace`` or
    ``kubernetes.labels.team``) whose value names the data stream namespace; documents
    without it go to `namespace`."""


class BulkConfig(Section):
    """How documents are grouped into _bulk requests."""

    max_bytes: ByteSize = Field(default=2 << 20, ge=1024)
    """Uncompressed body size at which a request is sent. The sink holds at most
    max_bytes × (max_in_flight + 1) of documents, so this sizes the agent's memory: 2 MiB
    (Fluent Bit's chunk size, about Filebeat's 1,600 events) delivered as fast as 5 MiB in
    bench/elasticsearch.py, with 15 MB less peak RSS."""
    max_documents: int = Field(default=5000, ge=1)
    flush_interval: Seconds = 0.2
    """How long a request waits for more documents before it is sent anyway."""
    max_in_flight: int = Field(default=2, ge=1)
    compression_level: int = Field(default=1, ge=0, le=9)
    """gzip level of request bodies; 0 sends them uncompressed."""


class RetryConfig(Section):
    """Backoff between attempts: exponential with full jitter, capped."""

    initial_backoff: Seconds = 0.1
    max_backoff: Seconds = 30.0


class DeadLetterConfig(Section):
    """Documents Elasticsearch refuses for good, with the reason."""

    data_stream: DataStreamName = "logs-observer.dead_letter-default"
    file: Path = Path("dead-letter.jsonl")
    """Used when the dead-letter data stream refuses a document too; relative to state_dir."""


class IlmPolicyConfig(Section):
    enabled: bool = True
    name: str = "observer-logs"
    rollover_max_primary_shard_size: ByteSize = 50 << 30
    rollover_max_age: Seconds = 86400.0
    delete_after: Seconds = 7 * 86400.0


class SetupConfig(Section):
    """Index templates, ILM policy and data stream installed at start; off when managed elsewhere."""

    enabled: bool = True
    number_of_shards: int = Field(default=1, ge=1)
    number_of_replicas: int = Field(default=1, ge=0)
    ilm: IlmPolicyConfig = IlmPolicyConfig()


class ElasticsearchSinkConfig(ElasticsearchConfig):
    """The agent's log sink: exactly-once writes into data streams (see observer/sinks)."""

    data_stream: DataStreamConfig = DataStreamConfig()
    bulk: BulkConfig = BulkConfig()
    retry: RetryConfig = RetryConfig()
    dead_letter: DeadLetterConfig = DeadLetterConfig()
    setup: SetupConfig = SetupConfig()


# --- the agent's span path: receivers, and the collector replicas as a sink --------------


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PydanticCustomError(
            "host_port", "not an address host:port: {value}", {"value": repr(value)}
        )
    return value


HostPort = Annotated[str, AfterValidator(_host_port)]

DEFAULT_MAX_REQUEST_BYTES = 20 << 20
"""The OTLP specification's recommended limit on a request body, after decompression."""


class OtlpGrpcReceiverConfig(Section):
    enabled: bool = True
    listen: ListenAddress = "0.0.0.0:4317"
    max_request_bytes: ByteSize = Field(default=DEFAULT_MAX_REQUEST_BYTES, ge=1024)
    tls: ServerTlsConfig | None = None


class OtlpHttpReceiverConfig(Section):
    """`POST /v1/traces`, protobuf or JSON."""

    enabled: bool = True
    listen: ListenAddress = "0.0.0.0:4318"
    max_request_bytes: ByteSize = Field(default=DEFAULT_MAX_REQUEST_BYTES, ge=1024)
    tls: ServerTlsConfig | None = None


class ZipkinReceiverConfig(Section):
    """`POST /api/v2/spans`, JSON or protobuf (Envoy and Istio sidecars)."""

    enabled: bool = True
    listen: ListenAddress = "0.0.0.0:9411"
    max_request_bytes: ByteSize = Field(default=DEFAULT_MAX_REQUEST_BYTES, ge=1024)
    tls: ServerTlsConfig | None = None


class SpansConfig(Section):
    """Spans from this node's workloads and sidecars, given their pod's identity and
    routed by trace id to one collector replica (`sinks.collector`)."""

    enabled: bool = False
    otlp_grpc: OtlpGrpcReceiverConfig = OtlpGrpcReceiverConfig()
    otlp_http: OtlpHttpReceiverConfig = OtlpHttpReceiverConfig()
    zipkin: ZipkinReceiverConfig = ZipkinReceiverConfig()
    max_concurrent_requests: int = Field(default=64, ge=1)
    """Per receiver; more at once are answered "retry later" (HTTP: before their bodies
    are read)."""


class CollectorBatchConfig(Section):
    """How spans for one replica are grouped into an export request."""

    max_spans: int = Field(default=2048, ge=1)
    max_bytes: ByteSize = Field(default=2 << 20, ge=1024)
    """Keep under the replicas' gRPC receive limit (4 MiB by default)."""
    flush_interval: Seconds = 0.2


class CollectorQueueConfig(Section):
    max_bytes: ByteSize = Field(default=64 << 20, ge=1024)
    """Encoded spans held for all replicas (queued and in flight); at the bound the
    receivers answer "retry later" (HTTP 429, gRPC RESOURCE_EXHAUSTED)."""


class CollectorRetryConfig(RetryConfig):
    max_elapsed: Seconds = 60.0
    """A batch still failing after this long is dropped and counted."""


class CollectorTlsConfig(Section):
    """TLS to the collector replicas (their receivers' `tls`). Off by default, as spans
    stay inside the cluster's network; the files are read when the agent starts."""

    enabled: bool = False
    ca_file: Path | None = None
    """The CA that signed the replicas' certificate; the system's roots when not given."""
    cert_file: Path | None = None
    key_file: Path | None = None
    """A client certificate and its key, for replicas that require one (mutual TLS)."""
    server_name: str | None = None
    """The name the replicas' certificate must carry. By default the host of `endpoint`
    (replicas found through it are dialled by IP), or of each of `endpoints`."""

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> CollectorTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise PydanticCustomError("tls_pair", "cert_file and key_file must be given together")
        return self


class CollectorSinkConfig(Section):
    """The collector replicas, over OTLP/gRPC; each trace goes to the replica its id
    hashes to (a consistent hash ring)."""

    endpoint: HostPort = "observer-collector-headless:4317"
    """A headless Service's name and port: resolved to every replica, again every
    `resolve_interval`."""
    endpoints: list[HostPort] = []
    """A static list of replicas, used instead of resolving `endpoint` when not empty."""
    resolve_interval: Seconds = Field(default=5.0, gt=0)
    timeout: Seconds = Field(default=5.0, gt=0)
    """Per export request."""
    compression: Literal["gzip", "none"] = "gzip"
    max_in_flight: int = Field(default=2, ge=1)
    """Export requests at once, per replica."""
    batch: CollectorBatchConfig = CollectorBatchConfig()
    queue: CollectorQueueConfig = CollectorQueueConfig()
    retry: CollectorRetryConfig = CollectorRetryConfig()
    tls: CollectorTlsConfig = CollectorTlsConfig()


class AgentSinks(Section):
    elasticsearch: ElasticsearchSinkConfig | None = ElasticsearchSinkConfig()
    file: FileSinkConfig | None = None
    collector: CollectorSinkConfig = CollectorSinkConfig()
    """Where `sources.spans` sends spans (only used when that is enabled)."""

    @model_validator(mode="after")
    def _at_least_one(self) -> AgentSinks:
        if self.elasticsearch is None and self.file is None:
            raise PydanticCustomError("no_sink", "configure at least one sink")
        return self


class PodLogFilter(Section):
    """Glob patterns (fnmatch); a file matches when every non-empty list has a match."""

    namespaces: list[str] = []
    pods: list[str] = []
    containers: list[str] = []


MultilineLanguage = Literal["java", "python", "go", "node"]


class MultilineOverride(PodLogFilter):
    """Other multiline settings for the files this filter matches; unset keys are inherited."""

    enabled: bool | None = None
    languages: list[MultilineLanguage] | None = None

    @model_validator(mode="after")
    def _selects_and_changes(self) -> MultilineOverride:
        if not (self.namespaces or self.pods or self.containers):
            raise PydanticCustomError(
                "override_match", "an override needs namespaces, pods or containers to match"
            )
        if self.enabled is None and self.languages is None:
            raise PydanticCustomError("override_empty", "an override sets enabled or languages")
        return self


class MultilineConfig(Section):
    """Joining the lines of a stack trace into one document (Java, Python, Go, Node.js)."""

    enabled: bool = True
    languages: list[MultilineLanguage] = ["java", "python", "go", "node"]
    max_lines: int = Field(default=500, ge=2)
    """A longer trace is emitted in pieces of this many lines (also at max_line_bytes)."""
    max_wait: Seconds = 1.0
    """A trace whose stream has no new line for this long is emitted as it is."""
    overrides: list[MultilineOverride] = []
    """The first override whose filter matches a file decides for it."""


class PodLogsConfig(Section):
    """The kubelet's container log files on this node."""

    root: Path = Path("/var/log/pods")
    include: PodLogFilter = PodLogFilter()
    """Empty: every file. Otherwise only files that match."""
    exclude: PodLogFilter = PodLogFilter()
    max_line_bytes: ByteSize = Field(default=1 << 20, ge=1024)
    """A longer line, after merging partials, is truncated with a mark and counted."""
    read_bytes: ByteSize = Field(default=256 << 10, ge=4096)
    poll_interval: Seconds = 0.25
    """How often growing files are read; at once again while a read left lines behind."""
    rescan_interval: Seconds = 10.0
    """How often the tree is scanned; inotify reports new, renamed and deleted files sooner."""
    queue_batches: int = Field(default=4, ge=1)
    """Batches read but not yet delivered; when full, reading waits (backpressure)."""
    multiline: MultilineConfig = MultilineConfig()


class LeaderElectionConfig(Section):
    """The Lease (coordination.k8s.io/v1) through which the agents choose the one that
    watches the cluster's kubelet Events; it also holds where that watch resumes."""

    namespace: str = "default"
    """The chart sets the release's namespace (its Role grants the Lease there)."""
    lease_name: str = "observer-kube-events"
    identity: str = ""
    """Who holds the Lease; empty: the host name and the process id."""
    lease_duration: Seconds = Field(default=30.0, gt=0)
    """Past this without a renewal seen, another agent takes over."""
    renew_interval: Seconds = Field(default=10.0, gt=0)
    """How often the leader renews, and how often the others look."""

    @model_validator(mode="after")
    def _renewal_fits_in_the_lease(self) -> LeaderElectionConfig:
        if self.renew_interval * 2 > self.lease_duration:
            raise PydanticCustomError(
                "lease",
                "renew_interval must be at most half of lease_duration, so that a leader "
                "retries renewing before the lease expires",
            )
        return self


class KubeEventsConfig(Section):
    """The kubelet's Events (probe failures, kills, back-offs), and container restarts and
    OOM kills from the pods' status, as records of their own."""

    enabled: bool = True
    """Needs `kubernetes.enabled` (the records carry the pod's metadata)."""
    scope: Literal["node", "cluster"] = "node"
    """node: every agent watches the kubelet's Events and keeps its node's (the API server
    sends each agent every kubelet Event; fine up to a few hundred nodes). cluster: the
    agents elect one through a Lease, which alone watches and ships every kubelet Event
    (the chart's choice; docs/kubernetes-api-load.md)."""
    leader_election: LeaderElectionConfig = LeaderElectionConfig()
    """Used with scope: cluster."""
    dataset: DataStreamPart = "kubernetes.event"
    """The data stream is ``logs-<dataset>-<namespace>``, beside the container logs'."""
    queue_records: int = Field(default=10000, ge=1)
    """Records waiting for the sinks; past this, new ones are dropped and counted."""


class AgentSources(Section):
    pod_logs: PodLogsConfig = PodLogsConfig()
    kube_events: KubeEventsConfig = KubeEventsConfig()
    spans: SpansConfig = SpansConfig()


class AgentConfig(Section):
    """`agent.yaml`: one agent per node."""

    node_name: str = Field(default="", description="this node's name; the chart sets NODE_NAME")
    state_dir: Path = Path("/var/lib/observer")
    shutdown_timeout: Seconds = 15.0
    """On SIGTERM, how long delivery may go on; what is not acknowledged by then is read
    again at the next start (Kubernetes' default grace period is 30 s)."""
    telemetry: TelemetryConfig = TelemetryConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    sources: AgentSources = AgentSources()
    sinks: AgentSinks = AgentSinks()


class EmbeddedStoreConfig(Section):
    """The embedded trace store: one SQLite file, no server (the demo, small clusters)."""

    path: Path = Path("/var/lib/observer/traces.sqlite")


class CollectorStorage(Section):
    """Where whole traces are kept for the query API (observer/collector/store)."""

    elasticsearch: ElasticsearchConfig | None = None
    """Set: traces go to this Elasticsearch cluster. Unset: to the embedded store."""
    embedded: EmbeddedStoreConfig = EmbeddedStoreConfig()
    retention: Seconds = Field(default=7 * 86400.0, gt=0)
    """Traces that started longer ago than this are deleted."""


class QueryConfig(Section):
    """The Jaeger-compatible HTTP query API that Grafana's Jaeger data source and Jaeger's UI call."""

    listen: ListenAddress = "0.0.0.0:16686"


class CollectorReceivers(Section):
    """Where the collector takes spans: the agents export OTLP/gRPC, routed by trace id;
    OTLP/HTTP is for senders that reach the collector directly."""

    otlp_grpc: OtlpGrpcReceiverConfig = OtlpGrpcReceiverConfig()
    otlp_http: OtlpHttpReceiverConfig = OtlpHttpReceiverConfig()
    max_concurrent_requests: int = Field(default=64, ge=1)
    """Per receiver; more at once are answered "retry later" (HTTP: before their bodies
    are read)."""

    @model_validator(mode="after")
    def _at_least_one(self) -> CollectorReceivers:
        if not (self.otlp_grpc.enabled or self.otlp_http.enabled):
            raise PydanticCustomError("no_receiver", "enable at least one receiver")
        return self


# --- the collector's trace path: assembly, reconstruction, graph, sampling ---------------


def _ascending_buckets(value: list[float]) -> list[float]:
    if not value or any(bound <= 0 for bound in value) or value != sorted(set(value)):
        raise PydanticCustomError(
            "buckets", "not ascending positive bucket bounds: {value}", {"value": repr(value)}
        )
    return value


Buckets = Annotated[list[float], AfterValidator(_ascending_buckets)]


class AssemblyConfig(Section):
    """Spans held per trace id until the trace is emitted (observer/collector/assemble.py)."""

    idle_timeout: Seconds = Field(default=5.0, gt=0)
    """A trace with no new span for this long is emitted."""
    max_age: Seconds = Field(default=60.0, gt=0)
    """A trace live for this long is emitted however busy it is."""
    late_window: Seconds = 60.0
    """After emission a trace is kept this long, so late spans are merged into it and it is
    emitted again; 0 turns merging off (a late span then starts a new trace)."""
    max_live_traces: int = Field(default=20_000, ge=1)
    """At this many live traces, the oldest is emitted early (counted)."""
    max_live_spans: int = Field(default=300_000, ge=1)
    """Spans held, live and kept for late spans. At the bound, kept traces are forgotten
    first, then the oldest live ones emitted early (counted). About 1.5 KB each."""
    max_queued_spans: int = Field(default=50_000, ge=1)
    """Spans received and not yet assembled; at the bound receivers answer retryably
    (gRPC RESOURCE_EXHAUSTED, HTTP 429)."""


class ReconstructionConfig(Section):
    max_clock_skew: Seconds = 60.0
    """A child span is moved at most this far to fit inside its parent; a larger skew is
    left as it is and marked on the span."""


class GraphConfig(Section):
    """Service-graph and RED metrics, with Tempo's names (observer/collector/graph.py)."""

    request_buckets: Buckets = Field(default_factory=lambda: [0.1 * 2**i for i in range(8)])
    """Seconds; Tempo's service-graph default."""
    latency_buckets: Buckets = Field(default_factory=lambda: [0.002 * 2**i for i in range(14)])
    """Seconds; Tempo's span-metrics default."""
    max_series: int = Field(default=10_000, ge=1)
    """Label sets per metric; observations beyond are counted as overflow."""


class SamplingConfig(Section):
    """Tail sampling after assembly (observer/collector/sample.py)."""

    keep_errors: bool = True
    latency_threshold: Seconds | None = 1.0
    """Traces longer than this are kept; null turns the policy off."""
    probabilistic_share: float = Field(default=0.1, ge=0, le=1)
    """The share of the other traces kept, decided by trace id."""


class CollectorConfig(Section):
    """`collector.yaml`: the horizontally scaled trace collector."""

    shutdown_timeout: Seconds = 15.0
    """On SIGTERM, how long the spans already taken may take to be assembled and stored;
    past it the store is closed and what it could not write is counted as dropped."""
    telemetry: TelemetryConfig = TelemetryConfig()
    receivers: CollectorReceivers = CollectorReceivers()
    storage: CollectorStorage = CollectorStorage()
    query: QueryConfig = QueryConfig()
    assembly: AssemblyConfig = AssemblyConfig()
    reconstruction: ReconstructionConfig = ReconstructionConfig()
    graph: GraphConfig = GraphConfig()
    sampling: SamplingConfig = SamplingConfig()


Deployable = Literal["agent", "collector"]
MODELS: dict[Deployable, type[Section]] = {"agent": AgentConfig, "collector": CollectorConfig}

# --- loading -----------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}")

Config = TypeVar("Config", bound=Section)


def interpolate(
    tree: Any, env: Mapping[str, str], read_file: Callable[[str], str], path: str = ""
) -> tuple[Any, list[str]]:
    """Resolve ``${...}`` references in every string of a parsed YAML tree.

    Returns the new tree and the problems found, each prefixed with its key path.
    """
    problems: list[str] = []
    if isinstance(tree, dict):
        out_dict = {}
        for key, value in tree.items():
            out_dict[key], sub = interpolate(value, env, read_file, _join(path, str(key)))
            problems += sub
        return out_dict, problems
    if isinstance(tree, list):
        out_list = []
        for index, value in enumerate(tree):
            item, sub = interpolate(value, env, read_file, f"{path}[{index}]")
            out_list.append(item)
            problems += sub
        return out_list, problems
    if not isinstance(tree, str) or "${" not in tree:
        return tree, problems

    def resolve(match: re.Match[str]) -> str:
        if match[0] == "$${":
            return "${"
        reference = match[1]
        if reference.startswith("file:"):
            file_path = reference[len("file:") :]
            try:
                return read_file(file_path).removesuffix("\n")
            except OSError as error:
                problems.append(f"{path or '<root>'}: cannot read {file_path}: {error.strerror}")
                return ""
        name, has_default, default = reference.partition(":-")
        if name in env and (env[name] or not has_default):
            return env[name]
        if has_default:
            return default
        problems.append(f"{path or '<root>'}: environment variable {name} is not set")
        return ""

    return _REFERENCE.sub(resolve, tree), problems


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _format_location(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        text = f"{text}[{part}]" if isinstance(part, int) else _join(text, part)
    return text or "<root>"


def _model_at(model: type[BaseModel], location: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that owns the key at `location`, to list the keys it allows."""
    current: Any = model
    for part in location:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _first_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _first_model(argument)
        if found is not None:
            return found
    return None


def describe_errors(model: type[BaseModel], error: ValidationError) -> list[str]:
    """One line per problem: the key path, then what was expected, in words."""
    lines = []
    for item in error.errors(include_url=False):
        location = tuple(item["loc"])
        where = _format_location(location)
        if item["type"] == "extra_forbidden":
            owner = _model_at(model, location[:-1])
            allowed = ", ".join(sorted(owner.model_fields)) if owner else "none"
            lines.append(f"{where}: unknown key; allowed here: {allowed}")
        elif item["type"] in ("literal_error", "enum"):
            lines.append(f"{where}: {item['msg'].lower()}, got {item['input']!r}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {message}")
    return lines


def parse(
    model: type[Config],
    text: str,
    source: str = "<config>",
    env: Mapping[str, str] | None = None,
    read_file: Callable[[str], str] = lambda path: Path(path).read_text(),
) -> Config:
    """Validate a YAML document against `model`, raising ConfigError with every problem."""
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(source, [f"{where}not valid YAML: {problem}"]) from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(
            source, [f"<root>: expected a mapping of keys, got {type(tree).__name__}"]
        )
    tree, problems = interpolate(tree, os.environ if env is None else env, read_file)
    try:
        config = model.model_validate(tree)
    except ValidationError as error:
        problems += describe_errors(model, error)
    if problems:
        raise ConfigError(source, problems)
    return config


def load(deployable: Deployable, path: Path, env: Mapping[str, str] | None = None) -> Section:
    """Read and validate the configuration file of one deployable."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(str(path), [f"cannot read the file: {error.strerror}"]) from None
    return parse(MODELS[deployable], text, str(path), env)


def load_agent(path: Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    config = load("agent", path, env)
    assert isinstance(config, AgentConfig)
    return config


def load_collector(path: Path, env: Mapping[str, str] | None = None) -> CollectorConfig:
    config = load("collector", path, env)
    assert isinstance(config, CollectorConfig)
    return config
