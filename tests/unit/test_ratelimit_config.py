"""Rate-limit configs through the real loader: Envoy field names and defaults, errors with their
file and YAML path, the Lyft limits format and its matching rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from filters.connection_limit.config import ConnectionLimitConfig
from filters.local_ratelimit.config import LocalRateLimitConfig
from filters.ratelimit.config import RateLimitConfig
from filters.redis_ratelimit.algorithms import Algorithm
from filters.redis_ratelimit.config import RedisRateLimitConfig
from filters.redis_ratelimit.lyft_config import LyftConfigError, Unit, load_lyft_file, parse_lyft_config
from meshproxy.config import ConfigError, load_config

TYPED = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
LOCAL = "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"
CONN = "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
GLOBAL = "type.googleapis.com/envoy.extensions.filters.network.ratelimit.v3.RateLimit"
REDIS = "type.googleapis.com/meshproxy.filters.network.redis_ratelimit.v1.RedisRateLimit"
DESCRIPTORS = [{"entries": [{"key": "client", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}]}]
LIMITS = {"domain": "edge", "descriptors": [{"key": "client", "rate_limit": {"unit": "second",
                                                                                "requests_per_unit": 5}}]}


def config(*typed_configs: dict[str, Any]) -> dict[str, Any]:
    filters = [{"name": "f", "typed_config": t} for t in typed_configs]
    filters.append({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "tcp", "cluster": "backend"}})
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}
    clusters = [{"name": name, "type": "STATIC", "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]}} for name in ("backend", "rls")]
    return {"static_resources": {"listeners": [{
        "name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": filters}]}], "clusters": clusters}}


def load(tmp_path: Path, document: dict[str, Any], name: str = "envoy.yaml") -> list[Any]:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    bootstrap = load_config([str(path)])
    return [f.config for f in bootstrap.listeners[0].filter_chain.filters]


def errors(tmp_path: Path, document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, document)
    return [e.split(": ", 1)[1] for e in info.value.errors]  # without the file name


# ----- local_ratelimit / connection_limit -----------------------------------------------------


def test_local_ratelimit_fields_and_defaults(tmp_path: Path) -> None:
    a, b, *_ = load(tmp_path, config(
        {"@type": LOCAL, "stat_prefix": "a", "token_bucket": {"max_tokens": 20, "fill_interval": "1s"}},
        {"@type": LOCAL, "stat_prefix": "b", "share_key": "k", "runtime_enabled": {
            "default_value": False, "runtime_key": "x"},
         "token_bucket": {"max_tokens": 5, "tokens_per_fill": 2, "fill_interval": "0.05s"}}))
    assert isinstance(a, LocalRateLimitConfig) and isinstance(b, LocalRateLimitConfig)
    bucket = a.token_bucket
    assert (bucket.max_tokens, bucket.tokens_per_fill, bucket.fill_interval) == (20, 1, 1.0)
    assert a.enabled and not b.enabled
    # Without share_key each filter has its own host-wide bucket (keyed by its YAML path).
    assert a.bucket_key == f"path:{TYPED}"
    assert b.bucket_key == "share:k"


def test_local_ratelimit_errors(tmp_path: Path) -> None:
    bad = {"@type": LOCAL, "stat_prefix": "", "token_bucket": {"max_tokens": 0, "fill_interval": "0.01s"}}
    assert errors(tmp_path, config(bad)) == [
        f"{TYPED}.stat_prefix: must not be empty",
        f"{TYPED}.token_bucket.fill_interval: expected a duration >= 0.05s, got '0.01s'",
        f"{TYPED}.token_bucket.max_tokens: expected integer in [1, 4294967295], got 0",
    ]
    no_interval = {"@type": LOCAL, "stat_prefix": "a", "token_bucket": {"max_tokens": 1}}
    assert errors(tmp_path, config(no_interval)) == [
        f"{TYPED}.token_bucket: missing required field 'fill_interval' in TokenBucket"]


def test_connection_limit_fields(tmp_path: Path) -> None:
    limited, *_ = load(tmp_path, config({"@type": CONN, "stat_prefix": "c", "max_connections": 7,
                                         "delay": "0.5s"}))
    assert isinstance(limited, ConnectionLimitConfig)
    assert (limited.max_connections, limited.delay, limited.enabled) == (7, 0.5, True)
    immediate, *_ = load(tmp_path, config({"@type": CONN, "stat_prefix": "c", "max_connections": 1,
                                           "delay": "0s"}))
    assert immediate.delay is None
    assert errors(tmp_path, config({"@type": CONN, "stat_prefix": "c"})) == [
        f"{TYPED}: missing required field 'max_connections' in ConnectionLimit"]


# ----- ratelimit (gRPC) ---------------------------------------------------------------------------


def rls(**fields: Any) -> dict[str, Any]:
    return {"@type": GLOBAL, "stat_prefix": "g", "domain": "edge", "descriptors": DESCRIPTORS,
            "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "rls"}},
                                   "transport_api_version": "V3"}, **fields}


def test_ratelimit_fields_and_defaults(tmp_path: Path) -> None:
    compiled, *_ = load(tmp_path, config(rls()))
    assert isinstance(compiled, RateLimitConfig)
    assert (compiled.domain, compiled.timeout, compiled.failure_mode_deny) == ("edge", 0.020, False)
    assert (compiled.cluster, compiled.authority) == ("rls", "rls")
    assert not compiled.descriptors.static


class _Info:
    remote_address = ("10.1.2.3", 5555)
    local_address = ("::1", 80)


def test_descriptor_values_substitute_connection_operators(tmp_path: Path) -> None:
    compiled, *_ = load(tmp_path, config(rls(descriptors=[
        {"entries": [{"key": "a", "value": "%DOWNSTREAM_REMOTE_ADDRESS%"},
                     {"key": "b", "value": "port-%DOWNSTREAM_LOCAL_PORT%-x"}]},
        {"entries": [{"key": "c", "value": "%DOWNSTREAM_LOCAL_ADDRESS%"}]}])))
    assert compiled.descriptors.resolve(_Info()) == (
        (("a", "10.1.2.3:5555"), ("b", "port-80-x")), (("c", "[::1]:80"),))


def test_ratelimit_errors(tmp_path: Path) -> None:
    bad = rls(descriptors=[{"entries": [{"key": "a", "value": "%REQ(x-id)%"}]}], timeout="0s")
    bad["rate_limit_service"] = {"grpc_service": {"envoy_grpc": {"cluster_name": "nope"}},
                                 "transport_api_version": "AUTO"}
    found = errors(tmp_path, config(bad))
    assert f"{TYPED}.descriptors[0].entries[0].value: command operator '%REQ(x-id)%' is not supported by " \
           "meshproxy in descriptor values" in found[0]
    assert f"{TYPED}.timeout: expected a duration > 0s, got '0s'" in found
    assert f"{TYPED}.rate_limit_service.transport_api_version: AUTO is a valid Envoy value but not " \
           "supported by meshproxy (supported: V3)" in found
    assert errors(tmp_path, config(rls(descriptors=[]))) == [
        f"{TYPED}.descriptors: expected at least 1 item(s)"]
    unknown = rls()
    unknown["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"] = "rlx"
    assert errors(tmp_path, config(unknown)) == [
        f"{TYPED}.rate_limit_service.grpc_service.envoy_grpc.cluster_name: unknown cluster 'rlx' "
        "(did you mean 'rls'?)"]


# ----- redis_ratelimit ----------------------------------------------------------------------------


def redis_rl(**fields: Any) -> dict[str, Any]:
    return {"@type": REDIS, "stat_prefix": "r", "domain": "edge", "descriptors": DESCRIPTORS, **fields}


def test_redis_ratelimit_inline_limits_and_defaults(tmp_path: Path) -> None:
    compiled, *_ = load(tmp_path, config(redis_rl(limits=LIMITS)))
    assert isinstance(compiled, RedisRateLimitConfig)
    assert compiled.algorithm is Algorithm.FIXED_WINDOW
    assert (compiled.timeout, compiled.failure_mode_deny, compiled.near_limit_ratio) == (0.020, False, 0.8)
    assert compiled.redis_url == "redis://127.0.0.1:6379/0"
    assert (compiled.circuit_breaker.failure_threshold, compiled.circuit_breaker.open_duration) == (3, 1.0)
    assert compiled.limits.find((("client", "1.2.3.4"),)).requests_per_unit == 5  # type: ignore[union-attr]


def test_redis_ratelimit_limits_file_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "limits").mkdir()
    (tmp_path / "limits" / "edge.yaml").write_text(yaml.safe_dump(LIMITS))
    compiled, *_ = load(tmp_path, config(redis_rl(limits_file="limits/edge.yaml", algorithm="gcra",
                                                  timeout="0.5s", circuit_breaker={"failure_threshold": 5})))
    assert compiled.algorithm is Algorithm.GCRA
    assert compiled.limits.domain == "edge"
    assert compiled.circuit_breaker.failure_threshold == 5


def test_redis_ratelimit_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("domain: edge\ndescriptors:\n  - key: client\n"
                                       "    rate_limit: {unit: fortnight, requests_per_unit: 5}\n")
    found = errors(tmp_path, config(redis_rl(limits_file="bad.yaml")))
    assert found == [f"{TYPED}.limits_file: {tmp_path}/bad.yaml: descriptors[0].rate_limit.unit: "
                     "invalid rate limit unit 'fortnight' (expected one of second, minute, hour, day, week, "
                     "month, year)"]
    assert errors(tmp_path, config(redis_rl(limits_file="missing.yaml")))[0].startswith(
        f"{TYPED}.limits_file: cannot read the limits file {tmp_path}/missing.yaml")
    assert errors(tmp_path, config(redis_rl(limits={**LIMITS, "domain": "other"}))) == [
        f"{TYPED}.domain: the limits are for domain 'other', not 'edge'"]
    assert errors(tmp_path, config(redis_rl())) == [
        f"{TYPED}: one of 'limits_file', 'limits' is required in RedisRateLimit"]
    assert errors(tmp_path, config(redis_rl(limits=LIMITS, near_limit_ratio=1.5, algorithm="sliding"))) == [
        f"{TYPED}.algorithm: expected one of FIXED_WINDOW, GCRA, got 'sliding'",
        f"{TYPED}.near_limit_ratio: expected a number in (0, 1], got number 1.5",
    ]


# ----- Lyft's config format -------------------------------------------------------------------------

# Shaped like envoyproxy/ratelimit's examples/ratelimit/config files.
LYFT_FILE = """\
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: second
      requests_per_unit: 500
  - key: database
    value: default
    rate_limit:
      unit: Second
      requests_per_unit: 500
      name: default_db
  - key: database
    rate_limit: {unit: hour, requests_per_unit: 100}
    shadow_mode: true
  - key: client
    value: batch*
    descriptors:
      - key: method
        value: get
        rate_limit: {unlimited: true}
      - key: method
        detailed_metric: true
        rate_limit: {unit: minute, requests_per_unit: 60}
  - key: tenant
    value: "010"
    rate_limit: {unit: week, requests_per_unit: 7}
"""


@pytest.fixture
def lyft(tmp_path: Path) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(LYFT_FILE)
    return load_lyft_file(str(path))


@pytest.mark.parametrize(("entries", "expected"), [
    ((("database", "users"),), (500, Unit.SECOND, False)),
    ((("database", "default"),), (500, Unit.SECOND, False)),
    ((("database", "orders"),), (100, Unit.HOUR, True)),  # the key-only entry: any other value
    ((("client", "batch-7"), ("method", "get")), (0, None, False)),  # wildcard, then unlimited
    ((("client", "batch-7"), ("method", "put")), (60, Unit.MINUTE, False)),
    ((("client", "batch-7"),), None),  # the limits sit one level deeper
    ((("client", "web"), ("method", "put")), None),  # no value matches and no key-only entry
    ((("client", "batch-7"), ("method", "put"), ("x", "y")), None),  # deeper than the config
    ((("tenant", "010"),), (7, Unit.WEEK, False)),  # read as text, as Go's yaml does
    ((("unknown", "x"),), None),
])
def test_lyft_matching(lyft: Any, entries: tuple[tuple[str, str], ...], expected: Any) -> None:
    rule = lyft.find(entries)
    assert (None if rule is None else (rule.requests_per_unit, rule.unit, rule.shadow_mode)) == expected


def test_lyft_errors_name_every_problem() -> None:
    with pytest.raises(LyftConfigError) as info:
        parse_lyft_config({"domain": "d", "extra": 1, "descriptors": [
            {"key": "a", "rate_limit": {"unit": "second", "unlimited": True}},
            {"key": "b", "rate_limit": {"unit": "second", "requests_per_unit": -1,
                                        "replaces": [{"name": "x"}]}},
            {"value": "v"},
            {"key": "a"},
        ]})
    assert str(info.value).splitlines() == [
        "extra: unknown key 'extra' (expected one of descriptors, domain)",
        "descriptors[0].rate_limit: should not specify rate limit unit when unlimited",
        "descriptors[1].rate_limit.replaces: 'replaces' is a valid ratelimit key but not supported by "
        "meshproxy",
        "descriptors[1].rate_limit.requests_per_unit: expected an integer in [0, 4294967295], got -1",
        "descriptors[2]: descriptor has empty key",
        "descriptors[3]: duplicate descriptor composite key 'd.a'",
    ]
    with pytest.raises(LyftConfigError, match="config file cannot have empty domain"):
        parse_lyft_config({"descriptors": []})
