"""Parse a model server's Prometheus ``/metrics`` text into an :class:`EndpointMetrics` snapshot.

Pure parsing, no I/O: the scraper calls :func:`decode_exposition` and :func:`parse_exposition`
every 50 ms per endpoint.

Metric names (llm-d's):

| field                  | vLLM                               | SGLang                         |
|------------------------|------------------------------------|--------------------------------|
| `waiting`              | `vllm:num_requests_waiting`        | `sglang:num_queue_reqs`        |
| `running`              | `vllm:num_requests_running`        | `sglang:num_running_reqs`      |
| `kv_usage`             | `vllm:kv_cache_usage_perc`, else   | `sglang:token_usage`           |
|                        | `vllm:gpu_cache_usage_perc` (old)  |                                |
| `block_size`           | `vllm:cache_config_info`           | `sglang:page_size` (>= 0.5.11) |
|                        | label `block_size`                 | or label `page_size` (*)       |
| `num_gpu_blocks`       | `vllm:cache_config_info`           | `sglang:num_pages` (>= 0.5.11) |
|                        | label `num_gpu_blocks`             | or label `num_pages` (*)       |
| `prefix_cache_queries` | `vllm:prefix_cache_queries_total`  | `sglang:prompt_tokens_total`   |
| `prefix_cache_hits`    | `vllm:prefix_cache_hits_total`     | `sglang:cached_tokens_total`   |

(*) of ``sglang:cache_config_info``, the metric llm-d's SGLang mapping reads; current SGLang
exports the two gauges instead.

LoRA state (vLLM only, optional): ``vllm:lora_requests_info``, a gauge whose labels carry the
state and whose value is the time it was last current. Every combination seen stays exposed,
so the series with the newest value is the current one (llm-d reads it so):
``running_lora_adapters`` and ``waiting_lora_adapters`` (comma-separated adapter names) become
``lora_running`` / ``lora_waiting``, ``max_lora`` (or ``max_loras``) becomes ``max_lora``.
Absent (LoRA off, or no request yet): all three ``None``.

The first three are required: without them :class:`ExpositionError` names the missing metric.
One pod can expose several engines (vLLM data parallelism: one ``engine`` label value each;
SGLang: one ``dp_rank`` each): counts, block counts and counters are summed across label sets,
KV usage is averaged (engines have equal caches), the block size is the first one reported.
SGLang's per-priority breakdowns (``priority="<n>"``, beside the total under ``priority=""``)
are skipped so requests are not counted twice.

Speed. prometheus_client's parser takes ~6 ms for a real vLLM exposition (~55 kB, ~580 lines:
histograms, python/process/http metrics), which at one scrape per 50 ms would cost 13% of a core
per endpoint. So a fast path finds only the lines it needs with ``str.find`` (~60-130 us on the
fixtures, see ``docs/scheduler.md``) and falls back to the full parser when one of those lines
does not parse, or a required metric it did not find still occurs somewhere in the text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from scheduler.framework.types import EndpointMetrics


class ExpositionError(ValueError):
    """The text is not a usable exposition: unparsable, or a required metric is missing."""


@dataclass(frozen=True, slots=True)
class EngineMetricNames:
    """Where an engine exposes what the scheduler needs (sample names, counters with ``_total``)."""

    waiting: str
    running: str
    kv_usage: tuple[str, ...]
    """Alternatives, preferred first."""
    cache_info: str
    block_size_label: str
    num_blocks_label: str
    block_size_gauge: str | None = None
    num_blocks_gauge: str | None = None
    prefix_queries: str | None = None
    prefix_hits: str | None = None
    lora_info: str | None = None


ENGINES: Mapping[str, EngineMetricNames] = {
    "vllm": EngineMetricNames(
        waiting="vllm:num_requests_waiting",
        running="vllm:num_requests_running",
        kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        cache_info="vllm:cache_config_info",
        block_size_label="block_size",
        num_blocks_label="num_gpu_blocks",
        prefix_queries="vllm:prefix_cache_queries_total",
        prefix_hits="vllm:prefix_cache_hits_total",
        lora_info="vllm:lora_requests_info",
    ),
    "sglang": EngineMetricNames(
        waiting="sglang:num_queue_reqs",
        running="sglang:num_running_reqs",
        kv_usage=("sglang:token_usage",),
        cache_info="sglang:cache_config_info",
        block_size_label="page_size",
        num_blocks_label="num_pages",
        block_size_gauge="sglang:page_size",
        num_blocks_gauge="sglang:num_pages",
        prefix_queries="sglang:prompt_tokens_total",
        prefix_hits="sglang:cached_tokens_total",
    ),
}

Sample = tuple[dict[str, str], float]
"""A sample's labels and value."""

_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\\n]|\\.)*)"\s*(,|\})')
_UNESCAPE = re.compile(r"\\(.)")


class _Unparsable(Exception):
    """The fast path met a line it does not understand."""


def parse_exposition(text: str, *, engine: str, now: float) -> EndpointMetrics:
    """Read the scheduler's view of one endpoint from its ``/metrics`` text.

    ``engine`` is ``vllm`` or ``sglang``; ``now`` (monotonic seconds) becomes ``scraped_at``.
    Raises :class:`ExpositionError` for unparsable text or a missing required metric.
    """
    names = _engine(engine)
    try:
        return _snapshot(_FastIndex(text), names, now)
    except _Unparsable:
        pass
    except ExpositionError:
        # The full parser can find only names that occur in the text: when one is absent, spare
        # the ~6 ms (an endpoint with the wrong engine fails this way on every scrape).
        required = ((names.waiting,), (names.running,), names.kv_usage)
        if not all(any(name in text for name in group) for group in required):
            raise
    return _snapshot(_FullIndex(text), names, now)


def decode_exposition(body: bytes) -> str:
    """The exposition's text: UTF-8, as the format requires (whatever the Content-Type says).

    Raises :class:`ExpositionError` for bytes that are not UTF-8 (an undecoded compressed body,
    garbage), so one bad answer is a failed scrape, never an exception the scraper did not
    expect.
    """
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExpositionError(
            f"not UTF-8 text: {exc.reason} at byte {exc.start} of {len(body)}"
        ) from exc


def parse_exposition_strict(text: str, *, engine: str, now: float) -> EndpointMetrics:
    """:func:`parse_exposition` through prometheus_client's parser only (the reference; slow)."""
    return _snapshot(_FullIndex(text), _engine(engine), now)


def _engine(engine: str) -> EngineMetricNames:
    names = ENGINES.get(engine)
    if names is None:  # config validation rules this out: a programming error, not bad input
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(sorted(ENGINES))}")
    return names


# -- sample sources --------------------------------------------------------------------------
class _FastIndex:
    """Finds the sample lines of one metric with ``str.find``; parses only those lines."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def samples(self, name: str) -> list[Sample]:
        text = self._text
        found: list[Sample] = []
        needle = "\n" + name
        # A sample line starts the text or follows a newline; "# HELP" and "# TYPE" lines don't.
        if text.startswith(name):
            start = len(name)
        else:
            pos = text.find(needle)
            start = -1 if pos == -1 else pos + len(needle)
        while start != -1:
            end = text.find("\n", start)
            rest = text[start:] if end == -1 else text[start:end]
            if rest[:1] in ("{", " ", "\t"):
                found.append(_parse_rest(rest))
            elif not rest.strip():
                raise _Unparsable(name)  # a name without a value
            # else: a longer name with this prefix (``..._created``, ``..._by_reason``)
            if end == -1:
                break
            pos = text.find(needle, end)
            start = -1 if pos == -1 else pos + len(needle)
        return found


class _FullIndex:
    """Every sample, via prometheus_client's parser (slow, strict, handles every format)."""

    __slots__ = ("_by_name",)

    def __init__(self, text: str) -> None:
        by_name: dict[str, list[Sample]] = {}
        try:
            for family in text_string_to_metric_families(text):
                # Sample names keep the counter suffix ("_total") the family name loses.
                for sample in family.samples:
                    by_name.setdefault(sample.name, []).append(
                        (dict(sample.labels), float(sample.value))
                    )
        except Exception as exc:  # the parser raises ValueError, IndexError, TypeError...
            raise ExpositionError(f"unparsable exposition: {exc}") from exc
        self._by_name = by_name

    def samples(self, name: str) -> list[Sample]:
        return self._by_name.get(name, [])


def _parse_rest(rest: str) -> Sample:
    """Labels and value from what follows a metric name on its line."""
    labels: dict[str, str] = {}
    if rest[0] == "{":
        pos = 1
        if rest[1:2] == "}":
            pos = 2
        else:
            while True:
                m = _LABEL.match(rest, pos)
                if m is None:
                    raise _Unparsable(rest)
                value = m.group(2)
                labels[m.group(1)] = _UNESCAPE.sub(_unescape, value) if "\\" in value else value
                pos = m.end()
                if m.group(3) == "}":
                    break
                if rest[pos : pos + 1] == "}":  # trailing comma before the brace
                    pos += 1
                    break
        rest = rest[pos:]
    fields = rest.split()
    if not fields:
        raise _Unparsable(rest)
    try:
        return labels, float(fields[0])
    except ValueError:
        raise _Unparsable(rest) from None


def _unescape(m: re.Match[str]) -> str:
    return "\n" if m.group(1) == "n" else m.group(1)


# -- the snapshot ----------------------------------------------------------------------------
_SampleSource = _FastIndex | _FullIndex


def _snapshot(index: _SampleSource, names: EngineMetricNames, now: float) -> EndpointMetrics:
    waiting = _required(index, (names.waiting,))
    running = _required(index, (names.running,))
    kv = _required(index, names.kv_usage)
    block_size, num_blocks = _cache_config(index, names)
    running_lora, waiting_lora, max_lora = _lora(index, names.lora_info)
    return EndpointMetrics(
        waiting=_count(sum(waiting), names.waiting),
        running=_count(sum(running), names.running),
        kv_usage=sum(kv) / len(kv),
        scraped_at=now,
        block_size=block_size,
        num_gpu_blocks=num_blocks,
        prefix_cache_queries=_optional_sum(index, names.prefix_queries),
        prefix_cache_hits=_optional_sum(index, names.prefix_hits),
        lora_running=running_lora,
        lora_waiting=waiting_lora,
        max_lora=max_lora,
    )


_NO_LORA: tuple[None, None, None] = (None, None, None)


def _lora(
    index: _SampleSource, name: str | None
) -> tuple[frozenset[str], frozenset[str], int | None] | tuple[None, None, None]:
    """Running adapters, waiting adapters and ``max_lora`` from the newest LoRA info series."""
    if name is None:
        return _NO_LORA
    newest: dict[str, str] | None = None
    newest_at = -math.inf
    for labels, value in index.samples(name):
        if math.isfinite(value) and value >= newest_at:
            newest, newest_at = labels, value
    if newest is None:
        return _NO_LORA
    raw_max = newest.get("max_lora", newest.get("max_loras"))
    try:
        max_lora = int(float(raw_max)) if raw_max is not None else None
    except (ValueError, OverflowError):  # "", "None", "nan", "inf"
        max_lora = None
    if max_lora is not None and max_lora < 0:
        max_lora = None
    return (
        _adapter_names(newest.get("running_lora_adapters", "")),
        _adapter_names(newest.get("waiting_lora_adapters", "")),
        max_lora,
    )


def _adapter_names(label: str) -> frozenset[str]:
    return frozenset(name for part in label.split(",") if (name := part.strip()))


def _totals(samples: list[Sample]) -> Iterator[Sample]:
    for labels, value in samples:
        # SGLang with priority scheduling: the total is under priority="", breakdowns beside it.
        if not labels.get("priority", ""):
            yield labels, value


def _required(index: _SampleSource, alternatives: tuple[str, ...]) -> list[float]:
    for name in alternatives:
        values = [value for _, value in _totals(index.samples(name))]
        if values:
            for value in values:
                if not math.isfinite(value):
                    raise ExpositionError(f"metric {name} is not a finite number: {value}")
            return values
    wanted = alternatives[0] + "".join(f" (or {alt})" for alt in alternatives[1:])
    raise ExpositionError(f"missing metric {wanted}")


def _count(value: float, name: str) -> int:
    if value < 0:
        raise ExpositionError(f"metric {name} is negative: {value}")
    return round(value)


def _optional_sum(index: _SampleSource, name: str | None) -> float | None:
    if name is None:
        return None
    values = [v for _, v in _totals(index.samples(name)) if math.isfinite(v)]
    return sum(values) if values else None


def _positive_int(raw: str | float | None) -> int | None:
    try:
        value = float(raw) if raw is not None else math.nan
    except ValueError:  # vLLM writes "None" for unset config fields
        return None
    return int(value) if math.isfinite(value) and value >= 1 and value == int(value) else None


def _cache_config(index: _SampleSource, names: EngineMetricNames) -> tuple[int | None, int | None]:
    sizes: list[int] = []
    blocks: list[int] = []
    for labels, _ in _totals(index.samples(names.cache_info)):
        size = _positive_int(labels.get(names.block_size_label))
        count = _positive_int(labels.get(names.num_blocks_label))
        if size is not None:
            sizes.append(size)
        if count is not None:
            blocks.append(count)
    if names.block_size_gauge is not None and not sizes:
        sizes = [
            s
            for _, v in _totals(index.samples(names.block_size_gauge))
            if (s := _positive_int(v)) is not None
        ]
    if names.num_blocks_gauge is not None and not blocks:
        blocks = [
            b
            for _, v in _totals(index.samples(names.num_blocks_gauge))
            if (b := _positive_int(v)) is not None
        ]
    return (sizes[0] if sizes else None), (sum(blocks) if blocks else None)
