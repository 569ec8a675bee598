"""Parsing model-server /metrics text: real-shaped fixtures, engines, edge cases, garbage."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.backends import exposition
from gateway.backends.exposition import ExpositionError, parse_exposition, parse_exposition_strict
from scheduler.framework.types import EndpointMetrics

TESTDATA = Path(__file__).parent / "testdata"
NOW = 123.5


def fixture(name: str) -> str:
    return (TESTDATA / f"{name}.prom").read_text()


FIXTURES = [
    (
        "vllm_v1",
        "vllm",
        EndpointMetrics(
            waiting=3,
            running=17,
            kv_usage=0.4172,
            scraped_at=NOW,
            block_size=16,
            num_gpu_blocks=27153,
            prefix_cache_queries=13843085.0,
            prefix_cache_hits=8444281.0,
        ),
    ),
    (
        "vllm_v1_dp2",
        "vllm",
        EndpointMetrics(
            waiting=3,
            running=40,
            kv_usage=pytest.approx((0.4172 + 0.5518) / 2),  # type: ignore[arg-type]
            scraped_at=NOW,
            block_size=16,
            num_gpu_blocks=2 * 27153,
            prefix_cache_queries=33885467.0,
            prefix_cache_hits=20670134.0,
        ),
    ),
    (
        "vllm_v0_gpu_cache",
        "vllm",
        EndpointMetrics(
            waiting=2,
            running=5,
            kv_usage=0.2875,
            scraped_at=NOW,
            block_size=16,
            num_gpu_blocks=7224,
        ),
    ),
    (
        "sglang",
        "sglang",
        EndpointMetrics(
            waiting=4,
            running=14,
            kv_usage=0.36,
            scraped_at=NOW,
            block_size=1,
            num_gpu_blocks=144096,
            prefix_cache_queries=8128902.0,
            prefix_cache_hits=3578245.0,
        ),
    ),
]
FIXTURE_IDS = [name for name, _, _ in FIXTURES]


@pytest.mark.parametrize(("name", "engine", "expected"), FIXTURES, ids=FIXTURE_IDS)
def test_fixture(name: str, engine: str, expected: EndpointMetrics) -> None:
    assert parse_exposition(fixture(name), engine=engine, now=NOW) == expected


@pytest.mark.parametrize(("name", "engine", "expected"), FIXTURES, ids=FIXTURE_IDS)
def test_fast_path_agrees_with_prometheus_client(
    name: str, engine: str, expected: EndpointMetrics
) -> None:
    text = fixture(name)
    assert parse_exposition_strict(text, engine=engine, now=NOW) == expected
    assert parse_exposition(text, engine=engine, now=NOW) == parse_exposition_strict(
        text, engine=engine, now=NOW
    )


@pytest.mark.parametrize(("name", "engine", "expected"), FIXTURES, ids=FIXTURE_IDS)
def test_real_expositions_never_need_the_slow_parser(
    name: str, engine: str, expected: EndpointMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(text: str) -> None:
        raise AssertionError("fell back to prometheus_client's parser")

    monkeypatch.setattr(exposition, "text_string_to_metric_families", refuse)
    assert parse_exposition(fixture(name), engine=engine, now=NOW) == expected


# -- small texts: both parsers, same answers ---------------------------------------------------
BASE = "vllm:num_requests_waiting 1\nvllm:num_requests_running 2\nvllm:kv_cache_usage_perc 0.5\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE, EndpointMetrics(waiting=1, running=2, kv_usage=0.5, scraped_at=NOW)),
        (
            # untyped counters keep "_total"; "{}"; timestamps; no final newline
            "vllm:num_requests_waiting{} 4 1700000000000\n"
            'vllm:num_requests_running{engine="0",} 3\n'
            'vllm:kv_cache_usage_perc{model_name="m"} 1e-1\n'
            'vllm:prefix_cache_queries_total{engine="0"} 100\n'
            'vllm:prefix_cache_hits_total{engine="0"} 40',
            EndpointMetrics(
                waiting=4,
                running=3,
                kv_usage=0.1,
                scraped_at=NOW,
                prefix_cache_queries=100.0,
                prefix_cache_hits=40.0,
            ),
        ),
        (
            # names that merely start with a wanted name are not it
            BASE + 'vllm:num_requests_waiting_by_reason{reason="x"} 50\n'
            "vllm:num_requests_running_created 1.7e9\n",
            EndpointMetrics(waiting=1, running=2, kv_usage=0.5, scraped_at=NOW),
        ),
        (
            # escaped quotes and braces inside label values; "None" is not a number
            BASE + 'vllm:cache_config_info{block_size="32",note="a \\"}\\" b",'
            'num_gpu_blocks="None"} 1.0\n',
            EndpointMetrics(waiting=1, running=2, kv_usage=0.5, scraped_at=NOW, block_size=32),
        ),
        (
            # the kv metric of vLLM < 0.10 when the new one is absent
            "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\n"
            "vllm:gpu_cache_usage_perc 0.25\n",
            EndpointMetrics(waiting=0, running=0, kv_usage=0.25, scraped_at=NOW),
        ),
        (
            # CRLF line ends
            BASE.replace("\n", "\r\n"),
            EndpointMetrics(waiting=1, running=2, kv_usage=0.5, scraped_at=NOW),
        ),
    ],
    ids=["minimal", "format-variants", "prefix-names", "escaped-labels", "old-kv-name", "crlf"],
)
def test_vllm_text(text: str, expected: EndpointMetrics) -> None:
    assert parse_exposition(text, engine="vllm", now=NOW) == expected
    assert parse_exposition_strict(text, engine="vllm", now=NOW) == expected


SGLANG_BASE = (
    'sglang:num_queue_reqs{model_name="m",priority=""} 6\n'
    'sglang:num_queue_reqs{model_name="m",priority="0"} 2\n'
    'sglang:num_queue_reqs{model_name="m",priority="5"} 4\n'
    'sglang:num_running_reqs{model_name="m",dp_rank="0"} 3\n'
    'sglang:num_running_reqs{model_name="m",dp_rank="1"} 5\n'
    'sglang:token_usage{model_name="m",dp_rank="0"} 0.2\n'
    'sglang:token_usage{model_name="m",dp_rank="1"} 0.4\n'
)


@pytest.mark.parametrize(
    ("text", "block_size", "num_blocks"),
    [
        (SGLANG_BASE, None, None),
        (
            SGLANG_BASE
            + 'sglang:cache_config_info{model_name="m",page_size="16",num_pages="9000"} 1\n',
            16,
            9000,
        ),
        (
            SGLANG_BASE
            + 'sglang:page_size{dp_rank="0"} 64\nsglang:page_size{dp_rank="1"} 64\n'
            + 'sglang:num_pages{dp_rank="0"} 100\nsglang:num_pages{dp_rank="1"} 100\n',
            64,
            200,
        ),
    ],
    ids=["no-cache-config", "llm-d-cache-config-info", "page-gauges"],
)
def test_sglang_text(text: str, block_size: int | None, num_blocks: int | None) -> None:
    expected = EndpointMetrics(
        waiting=6,  # the priority="" total, not 6 + 2 + 4
        running=8,
        kv_usage=pytest.approx(0.3),  # type: ignore[arg-type]
        scraped_at=NOW,
        block_size=block_size,
        num_gpu_blocks=num_blocks,
    )
    assert parse_exposition(text, engine="sglang", now=NOW) == expected
    assert parse_exposition_strict(text, engine="sglang", now=NOW) == expected


# -- errors ------------------------------------------------------------------------------------
def without(text: str, *names: str) -> str:
    return "\n".join(
        line for line in text.splitlines() if not any(line.startswith(n) for n in names)
    )


@pytest.mark.parametrize(
    ("name", "engine", "drop", "message"),
    [
        (
            "vllm_v1",
            "vllm",
            ("vllm:num_requests_waiting",),
            "missing metric vllm:num_requests_waiting",
        ),
        (
            "vllm_v1",
            "vllm",
            ("vllm:num_requests_running",),
            "missing metric vllm:num_requests_running",
        ),
        (
            "vllm_v1",
            "vllm",
            ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
            "missing metric vllm:kv_cache_usage_perc (or vllm:gpu_cache_usage_perc)",
        ),
        ("sglang", "sglang", ("sglang:num_queue_reqs",), "missing metric sglang:num_queue_reqs"),
        ("sglang", "sglang", ("sglang:token_usage",), "missing metric sglang:token_usage"),
    ],
    ids=["waiting", "running", "kv-usage", "sglang-queue", "sglang-token-usage"],
)
def test_missing_required_metric_is_named(
    name: str, engine: str, drop: tuple[str, ...], message: str
) -> None:
    text = without(fixture(name), *drop)
    with pytest.raises(ExpositionError) as info:
        parse_exposition(text, engine=engine, now=NOW)
    assert str(info.value) == message


def test_wrong_engine_reports_what_is_missing() -> None:
    with pytest.raises(ExpositionError, match="missing metric sglang:num_queue_reqs"):
        parse_exposition(fixture("vllm_v1"), engine="sglang", now=NOW)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "missing metric vllm:num_requests_waiting"),
        ("<html><body>502 Bad Gateway</body></html>\n", "missing metric vllm:num_requests_waiting"),
        ('{"error": "not found"}', "missing metric vllm:num_requests_waiting"),
        ("\x00\xff\xfe garbage \x01\n", "missing metric vllm:num_requests_waiting"),
        (
            "<pre>vllm:num_requests_waiting vllm:num_requests_running"
            " vllm:kv_cache_usage_perc</pre>",
            "unparsable exposition: invalid metric name",
        ),
        (BASE + 'vllm:num_requests_waiting{engine="0" 1\n', "unparsable exposition"),
        (BASE.replace(" 1\n", " one\n"), "unparsable exposition"),
        (BASE.replace("vllm:num_requests_waiting 1", "vllm:num_requests_waiting"), "unparsable"),
        (BASE.replace(" 1\n", " NaN\n"), "vllm:num_requests_waiting is not a finite number"),
        (BASE.replace(" 0.5\n", " +Inf\n"), "vllm:kv_cache_usage_perc is not a finite number"),
        (BASE.replace(" 2\n", " -3\n"), "vllm:num_requests_running is negative"),
    ],
    ids=[
        "empty",
        "html",
        "json",
        "binary",
        "html-naming-the-metrics",
        "broken-labels",
        "bad-value",
        "no-value",
        "nan",
        "inf",
        "negative-count",
    ],
)
def test_garbage_raises_exposition_error(text: str, match: str) -> None:
    with pytest.raises(ExpositionError, match=match):
        parse_exposition(text, engine="vllm", now=NOW)


def test_exposition_error_is_a_value_error() -> None:
    assert issubclass(ExpositionError, ValueError)


def test_unknown_engine_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown engine 'tgi'") as info:
        parse_exposition(BASE, engine="tgi", now=NOW)
    assert not isinstance(info.value, ExpositionError)


# -- LoRA state: vllm:lora_requests_info, the newest series --------------------------------------
LORA_HEADER = (
    "# HELP vllm:lora_requests_info Running stats on lora requests.\n"
    "# TYPE vllm:lora_requests_info gauge\n"
)


@pytest.mark.parametrize(
    ("lines", "running", "waiting", "max_lora"),
    [
        (
            'vllm:lora_requests_info{max_lora="2",running_lora_adapters="sql-lora",'
            'waiting_lora_adapters="chat-lora"} 1.7589e+09\n'
            'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",'
            'waiting_lora_adapters=""} 1.7588e+09\n',
            {"sql-lora"},
            {"chat-lora"},
            2,
        ),
        (
            # the older series is first here: the newest value wins wherever it stands
            'vllm:lora_requests_info{max_lora="4",running_lora_adapters="a",'
            'waiting_lora_adapters=""} 1.70e+09\n'
            'vllm:lora_requests_info{max_lora="4",running_lora_adapters="a, b,c",'
            'waiting_lora_adapters="b"} 1.71e+09\n',
            {"a", "b", "c"},
            {"b"},
            4,
        ),
        (
            'vllm:lora_requests_info{max_loras="1",running_lora_adapters="",'
            'waiting_lora_adapters=""} 1.7e+09\n',
            set(),
            set(),
            1,
        ),
        (
            'vllm:lora_requests_info{running_lora_adapters="x",waiting_lora_adapters=""} 1\n',
            {"x"},
            set(),
            None,
        ),
    ],
    ids=["newest-last", "newest-first-and-spaces", "max-loras-label", "no-max"],
)
def test_lora_state_is_read_from_the_newest_series(
    lines: str, running: set[str], waiting: set[str], max_lora: int | None
) -> None:
    text = BASE + LORA_HEADER + lines
    for parse in (parse_exposition, parse_exposition_strict):
        metrics = parse(text, engine="vllm", now=NOW)
        assert metrics.lora_running == frozenset(running)
        assert metrics.lora_waiting == frozenset(waiting)
        assert metrics.max_lora == max_lora
        assert (metrics.waiting, metrics.running) == (1, 2)


def test_without_lora_info_there_is_no_lora_state() -> None:
    metrics = parse_exposition(BASE, engine="vllm", now=NOW)
    assert (metrics.lora_running, metrics.lora_waiting, metrics.max_lora) == (None, None, None)
