"""Envoy's own example configs (envoy-subset.md section 12) load, or fail only on what is unsupported.

Each file must either compile, or raise a ConfigError whose every message says
"not supported" about a named field (a YAML path), never a spurious error about
something meshproxy does implement.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshproxy.config import ConfigError, load_config

EXAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "envoy-examples"
FILES = sorted(EXAMPLES.glob("*.yaml")) if EXAMPLES.is_dir() else []
# "<file>: <yaml path>: <message>"; a path starts with a top-level Bootstrap field.
PATH = r"[a-z_]+(?:\.[a-z_]+|\[\d+\]|\[\"[^\"]+\"\])*"
ERROR = re.compile(rf"(?P<file>[^:]+): (?P<path>{PATH}): (?P<message>.+)")

# Examples that must compile today (others may start to as filters are added).
MUST_LOAD = {"tls-envoy-https-passthrough.yaml", "redis-envoy.yaml"}


@pytest.mark.skipif(not FILES, reason=f"no Envoy examples at {EXAMPLES}")
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_envoy_example(path: Path) -> None:
    try:
        bootstrap = load_config([str(path)])
    except ConfigError as exc:
        assert path.name not in MUST_LOAD, str(exc)
        assert exc.errors
        for error in exc.errors:
            m = ERROR.fullmatch(error)
            assert m is not None, f"no YAML path in: {error}"
            assert m["file"] == str(path)
            assert "not supported" in m["message"], error
    else:
        assert bootstrap.listeners and bootstrap.clusters


@pytest.mark.skipif(not FILES, reason=f"no Envoy examples at {EXAMPLES}")
def test_tls_passthrough_compiles_to_tcp_proxy() -> None:
    bootstrap = load_config([str(EXAMPLES / "tls-envoy-https-passthrough.yaml")])
    (listener,) = bootstrap.listeners
    (nf,) = listener.filter_chain.filters
    assert nf.name == "envoy.filters.network.tcp_proxy"
    assert nf.config.cluster == "service-https" and nf.config.stat_prefix == "https_passthrough"
    assert bootstrap.admin is None
    assert bootstrap.clusters[0].endpoints[0].address.address == "service-https"


@pytest.mark.skipif(not FILES, reason=f"no Envoy examples at {EXAMPLES}")
def test_redis_example_compiles_to_redis_proxy() -> None:
    bootstrap = load_config([str(EXAMPLES / "redis-envoy.yaml")])
    (listener,) = bootstrap.listeners
    (nf,) = listener.filter_chain.filters
    assert nf.name == "envoy.filters.network.redis_proxy" and nf.terminal
    assert nf.config.stat_prefix == "egress_redis" and nf.config.settings.op_timeout == 5.0
    assert nf.config.catch_all_route.cluster == "redis_cluster" and nf.config.routes == ()
    (cluster,) = bootstrap.clusters
    assert cluster.lb_policy.name == "MAGLEV" and cluster.type.name == "STRICT_DNS"
