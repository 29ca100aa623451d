"""Config loading: good configs compile, bad ones fail with every error, its file and YAML path.

Configs are built as dicts from a minimal valid one, dumped to temp files and loaded
through the public ``load_config``; nothing here opens a socket.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from filters import registry
from meshproxy.config import ConfigError, load_config
from meshproxy.config.model import Bootstrap, DiscoveryType, LbPolicy, SocketAddress

TCP_PROXY_URL = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
LISTENER = "static_resources.listeners[0]"
FILTER = f"{LISTENER}.filter_chains[0].filters[0]"
TYPED = f"{FILTER}.typed_config"
CLUSTER = "static_resources.clusters[0]"
SOCKET = f"{CLUSTER}.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address"

# A non-terminal filter, to check chain ordering (tcp_proxy is the only built-in terminal one).
NON_TERMINAL = registry.register(
    registry.FilterType(
        name="test.filters.network.passthrough",
        message="meshproxy.test.Passthrough",
        parse=lambda typed_config, ctx: object(),
        build=lambda config, worker: object,  # type: ignore[arg-type,return-value]
        terminal=False,
    )
)


def cluster(name: str = "backend", address: str = "127.0.0.1", port: int = 9000, **extra: Any) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": address, "port_value": port}}}}]}],
        },
        **extra,
    }


def tcp_proxy_filter(**typed: Any) -> dict[str, Any]:
    config = {"@type": TCP_PROXY_URL, "stat_prefix": "ingress", "cluster": "backend", **typed}
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": config}


def listener(port: int = 10000, filters: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "name": f"l{port}",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": filters if filters is not None else [tcp_proxy_filter()]}],
        **extra,
    }


def minimal() -> dict[str, Any]:
    return {"static_resources": {"listeners": [listener()], "clusters": [cluster()]}}


def write(tmp_path: Path, doc: object, name: str = "envoy.yaml") -> str:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def load(tmp_path: Path, doc: object, **kwargs: Any) -> Bootstrap:
    return load_config([write(tmp_path, doc)], **kwargs)


def errors_of(tmp_path: Path, doc: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, doc)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def assert_error(errors: list[str], path: str, *fragments: str) -> None:
    """One error is at exactly ``path`` (after the file name) and contains every fragment."""
    for error in errors:
        _, _, rest = error.partition(": ")
        if rest.startswith(f"{path}: ") and all(f in rest for f in fragments):
            return
    pytest.fail(f"no error at {path!r} with {fragments!r} in:\n" + "\n".join(errors))


# --- bad configs: (name, mutation of the minimal config, expected path, expected fragments) ----

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: object) -> Mutation:
    """A mutation setting a dotted path; integers index lists."""

    def apply(doc: dict[str, Any]) -> None:
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        node: Any = doc
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return apply


def _tcp(key: str, value: object) -> Mutation:
    return _set(f"static_resources.listeners.0.filter_chains.0.filters.0.typed_config.{key}", value)


def _sock(key: str, value: object) -> Mutation:
    prefix = "static_resources.clusters.0.load_assignment.endpoints.0.lb_endpoints.0.endpoint.address"
    return _set(f"{prefix}.socket_address.{key}", value)


def _filters(*filters: dict[str, Any]) -> Mutation:
    return _set("static_resources.listeners.0.filter_chains.0.filters", list(filters))


def _del_tcp(key: str) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        del doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][key]

    return apply


def case(name: str, mutate: Mutation, path: str, *fragments: str) -> Any:
    return pytest.param(mutate, path, fragments, id=name)


def _append(kind: str, item: dict[str, Any]) -> Mutation:
    return lambda doc: doc["static_resources"][kind].append(item)


def _weighted(*clusters: tuple[str, int]) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        _del_tcp("cluster")(doc)
        _tcp("weighted_clusters", {"clusters": [{"name": n, "weight": w} for n, w in clusters]})(doc)

    return apply


PASSTHROUGH = f"type.googleapis.com/{NON_TERMINAL.message}"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
STATSD = "type.googleapis.com/envoy.config.metrics.v3.StatsdSink"
L0 = "static_resources.listeners.0"
C0 = "static_resources.clusters.0"

BAD = [
    case("unknown field with suggestion", _tcp("stat_prefx", "x"), f"{TYPED}.stat_prefx",
         "unknown field 'stat_prefx'", "did you mean 'stat_prefix'?"),
    case("unknown top-level field", _set("statz_config", {}), "statz_config",
         "unknown field 'statz_config'", "did you mean 'stats_config'?"),
    case("unimplemented cluster field", _set(f"{C0}.health_checks", [{}]), f"{CLUSTER}.health_checks",
         "'health_checks' is a valid Envoy field but not supported by meshproxy"),
    case("unimplemented tcp_proxy field", _tcp("access_log", []), f"{TYPED}.access_log", "not supported"),
    case("unimplemented bootstrap field", _set("layered_runtime", {}), "layered_runtime", "not supported"),
    case("secrets", _set("static_resources.secrets", []), "static_resources.secrets", "not supported"),
    case("wrong type: string for integer", _sock("port_value", "80"), f"{SOCKET}.port_value",
         "expected integer, got string"),
    case("wrong type: YAML boolean for string", _tcp("stat_prefix", True), f"{TYPED}.stat_prefix",
         "expected string, got boolean", "quote it"),
    case("wrong type: mapping for list", _set("static_resources.clusters", {"name": "x"}),
         "static_resources.clusters", "expected list, got mapping"),
    case("unknown cluster", _tcp("cluster", "backedn"), f"{TYPED}.cluster",
         "unknown cluster 'backedn'", "did you mean 'backend'?"),
    case("unknown weighted cluster", _weighted(("backend", 1), ("other", 2)),
         f"{TYPED}.weighted_clusters.clusters[1].name", "unknown cluster 'other'"),
    case("weight 0", _weighted(("backend", 0)), f"{TYPED}.weighted_clusters.clusters[0].weight",
         "expected integer in [1, "),
    case("cluster and weighted_clusters",
         _tcp("weighted_clusters", {"clusters": [{"name": "backend", "weight": 1}]}),
         TYPED, "only one of 'cluster', 'weighted_clusters'"),
    case("no cluster at all", _del_tcp("cluster"), TYPED,
         "one of 'cluster', 'weighted_clusters' is required"),
    case("missing stat_prefix", _del_tcp("stat_prefix"), TYPED, "missing required field 'stat_prefix'"),
    case("max_connect_attempts 0", _tcp("max_connect_attempts", 0), f"{TYPED}.max_connect_attempts",
         "expected integer in [1, "),
    case("bare number duration", _set(f"{C0}.connect_timeout", 5), f"{CLUSTER}.connect_timeout",
         "expected a duration string such as '5s', got integer 5", "'5s'"),
    case("milliseconds duration", _tcp("idle_timeout", "500ms"), f"{TYPED}.idle_timeout",
         "seconds with an 's' suffix"),
    case("negative duration", _tcp("idle_timeout", "-1s"), f"{TYPED}.idle_timeout", "non-negative"),
    case("zero connect_timeout", _set(f"{C0}.connect_timeout", "0s"), f"{CLUSTER}.connect_timeout",
         "expected a duration > 0s"),
    case("stats_flush_interval too long", _set("stats_flush_interval", "300s"), "stats_flush_interval",
         ">= 0.001s and < 300s"),
    case("negative port", _sock("port_value", -1), f"{SOCKET}.port_value",
         "expected integer in [0, 65535], got -1"),
    case("port > 65535", _set(f"{L0}.address.socket_address.port_value", 70000),
         f"{LISTENER}.address.socket_address.port_value", "expected integer in [0, 65535], got 70000"),
    case("upstream port 0", _sock("port_value", 0), f"{SOCKET}.port_value", "port 0"),
    case("STATIC with a hostname", _sock("address", "backend.internal"), f"{SOCKET}.address",
         "STATIC cluster needs IP addresses", "'backend.internal'", "STRICT_DNS"),
    case("listener on a hostname", _set(f"{L0}.address.socket_address.address", "localhost"),
         f"{LISTENER}.address.socket_address.address", "expected an IP address"),
    case("UDP listener", _set(f"{L0}.address.socket_address.protocol", "UDP"),
         f"{LISTENER}.address.socket_address.protocol", "UDP is not supported"),
    case("pipe address", _set(f"{L0}.address", {"pipe": {"path": "/tmp/x"}}), f"{LISTENER}.address.pipe",
         "not supported"),
    case("v2 type URL",
         _tcp("@type", "type.googleapis.com/envoy.config.filter.network.tcp_proxy.v2.TcpProxy"),
         f'{TYPED}["@type"]', "v2 API", "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"),
    case("unknown @type",
         _filters({"name": "envoy.filters.network.http_connection_manager", "typed_config": {"@type": HCM}}),
         TYPED, "filter 'envoy.filters.network.http_connection_manager'", "HttpConnectionManager)",
         "is not supported by meshproxy"),
    case("missing @type", _del_tcp("@type"), TYPED, "missing '@type'"),
    case("non-terminal last filter",
         _filters(tcp_proxy_filter(), {"name": NON_TERMINAL.name, "typed_config": {"@type": PASSTHROUGH}}),
         f"{LISTENER}.filter_chains[0].filters[1]", "the last filter must be terminal"),
    case("terminal filter not last", _filters(tcp_proxy_filter(), tcp_proxy_filter()), FILTER,
         "is terminal and must be the last"),
    case("empty filter list", _filters(), f"{LISTENER}.filter_chains[0].filters", "needs network filters"),
    case("two filter chains",
         _set(f"{L0}.filter_chains", [{"filters": [tcp_proxy_filter()]}, {"filters": [tcp_proxy_filter()]}]),
         f"{LISTENER}.filter_chains[1]", "not supported: more than one filter chain"),
    case("filter_chain_match", _set(f"{L0}.filter_chains.0.filter_chain_match", {"destination_port": 80}),
         f"{LISTENER}.filter_chains[0].filter_chain_match",
         "not supported: filter_chain_match (destination_port)"),
    case("TLS on a filter chain", _set(f"{L0}.filter_chains.0.transport_socket", {"name": "tls"}),
         f"{LISTENER}.filter_chains[0].transport_socket", "'transport_socket'", "not supported"),
    case("no filter chain", _set(f"{L0}.filter_chains", []), LISTENER, "a listener needs a filter chain"),
    case("removed hosts", _set(f"{C0}.hosts", []), f"{CLUSTER}.hosts", "removed in v3: use load_assignment"),
    case("LOGICAL_DNS", _set(f"{C0}.type", "LOGICAL_DNS"), f"{CLUSTER}.type",
         "LOGICAL_DNS is a valid Envoy value but not supported"),
    case("misspelt enum", _set(f"{C0}.lb_policy", "ROUND_ROBBIN"), f"{CLUSTER}.lb_policy",
         "expected one of ROUND_ROBIN", "did you mean 'ROUND_ROBIN'?"),
    case("maglev table not prime", _set(f"{C0}.maglev_lb_config", {"table_size": 65536}),
         f"{CLUSTER}.maglev_lb_config.table_size", "prime"),
    case("draining endpoint",
         _set(f"{C0}.load_assignment.endpoints.0.lb_endpoints.0.health_status", "DRAINING"),
         f"{CLUSTER}.load_assignment.endpoints[0].lb_endpoints[0].health_status", "not supported"),
    case("protocol options",
         _set(f"{C0}.typed_extension_protocol_options",
              {"envoy.filters.network.thrift_proxy": {"@type": "type.googleapis.com/x.Thrift"}}),
         f'{CLUSTER}.typed_extension_protocol_options["envoy.filters.network.thrift_proxy"]',
         "protocol options for 'envoy.filters.network.thrift_proxy' are not supported"),
    case("protocol options of another type",
         _set(f"{C0}.typed_extension_protocol_options",
              {"envoy.filters.network.redis_proxy": {"@type": "type.googleapis.com/x.RedisProtocolOptions"}}),
         f'{CLUSTER}.typed_extension_protocol_options["envoy.filters.network.redis_proxy"]["@type"]',
         "expected envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions"),
    case("missing load_assignment", lambda d: d["static_resources"]["clusters"][0].pop("load_assignment"),
         CLUSTER, "missing required field 'load_assignment'"),
    case("duplicate listener address", _append("listeners", listener(10000, name="b")),
         "static_resources.listeners[1].address",
         "duplicate listener address 127.0.0.1:10000", "static_resources.listeners[0]"),
    case("duplicate listener name", _append("listeners", listener(10001, name="l10000")),
         "static_resources.listeners[1]", "duplicate listener name 'l10000'"),
    case("duplicate cluster name", _append("clusters", cluster()), "static_resources.clusters[1].name",
         "duplicate cluster name 'backend'"),
    case("unsupported stats sink",
         _set("stats_sinks", [{"name": "envoy.stat_sinks.dog_statsd", "typed_config": {
             "@type": "type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink"}}]),
         "stats_sinks[0].typed_config", "stats sink 'envoy.stat_sinks.dog_statsd'", "not supported"),
    case("statsd over a TCP cluster",
         _set("stats_sinks", [{"name": "envoy.stat_sinks.statsd",
                               "typed_config": {"@type": STATSD, "tcp_cluster_name": "backend"}}]),
         "stats_sinks[0].typed_config.tcp_cluster_name", "not supported"),
    case("bad stats regex",
         _set("stats_config", {"stats_matcher": {"inclusion_list": {"patterns": [
             {"safe_regex": {"regex": "("}}]}}}),
         "stats_config.stats_matcher.inclusion_list.patterns[0].safe_regex.regex",
         "invalid regular expression"),
    case("admin access_log", _set("admin", {"access_log": []}), "admin.access_log", "not supported"),
    case("node user_agent_name", _set("node", {"metadata": {"a": 1}, "user_agent_name": "x"}),
         "node.user_agent_name", "not supported"),
]


@pytest.mark.parametrize(("mutate", "path", "fragments"), BAD)
def test_bad_config(tmp_path: Path, mutate: Mutation, path: str, fragments: tuple[str, ...]) -> None:
    doc = minimal()
    mutate(doc)
    errors = errors_of(tmp_path, doc)
    assert_error(errors, path, *fragments)
    assert all(e.startswith(str(tmp_path / "envoy.yaml") + ": ") for e in errors)


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    doc = minimal()
    _tcp("stat_prefx", "x")(doc)
    _tcp("cluster", "missing")(doc)
    _sock("port_value", 70000)(doc)
    _set("static_resources.clusters.0.circuit_breakers", {})(doc)
    _set("stats_flush_interval", "5")(doc)
    errors = errors_of(tmp_path, doc)
    assert_error(errors, f"{TYPED}.stat_prefx", "unknown field")
    assert_error(errors, f"{TYPED}.cluster", "unknown cluster 'missing'")
    assert_error(errors, f"{SOCKET}.port_value", "65535")
    assert_error(errors, f"{CLUSTER}.circuit_breakers", "not supported")
    assert_error(errors, "stats_flush_interval", "expected a duration")
    assert len(errors) == 5


def test_an_invalid_cluster_still_resolves_references(tmp_path: Path) -> None:
    # The cluster has an error of its own; the tcp_proxy naming it must not add "unknown cluster".
    doc = minimal()
    _set("static_resources.clusters.0.outlier_detection", {})(doc)
    errors = errors_of(tmp_path, doc)
    assert len(errors) == 1 and "outlier_detection" in errors[0]


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    text = "static_resources:\n  listeners:\n    - name: x\n     address: {\n"
    errors = errors_of(tmp_path, text)
    assert len(errors) == 1
    assert errors[0].startswith(str(tmp_path / "envoy.yaml") + ": line 4")
    assert "invalid YAML" in errors[0]


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    text = "node:\n  id: a\n  id: b\n"
    (error,) = errors_of(tmp_path, text)
    assert "line 3" in error and "duplicate key 'id'" in error


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path, "- a\n- b\n")
    assert "expected a mapping at the top level, got list" in error


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config([str(tmp_path / "nope.yaml")])


# --- good configs -----------------------------------------------------------------------------


def test_minimal_tcp_proxy(tmp_path: Path) -> None:
    b = load(tmp_path, minimal())
    (lst,) = b.listeners
    assert lst.name == "l10000" and lst.address == SocketAddress("127.0.0.1", 10000)
    (nf,) = lst.filter_chain.filters
    assert nf.name == "envoy.filters.network.tcp_proxy" and nf.terminal and nf.type_url == TCP_PROXY_URL
    assert nf.config.cluster == "backend" and nf.config.stat_prefix == "ingress"
    assert nf.config.idle_timeout == 3600.0 and nf.config.max_connect_attempts == 1
    (c,) = b.clusters
    assert c.type is DiscoveryType.STATIC and c.connect_timeout == 5.0 and c.lb_policy is LbPolicy.ROUND_ROBIN
    assert c.endpoints[0].address == SocketAddress("127.0.0.1", 9000)
    assert b.admin is None and b.stats_flush_interval == 5.0 and b.stats_sinks == ()
    assert b.source_files == (str(tmp_path / "envoy.yaml"),) and b.raw == minimal()


def test_tcp_proxy_options(tmp_path: Path) -> None:
    doc = minimal()
    _tcp("idle_timeout", "0s")(doc)
    _tcp("max_connect_attempts", 3)(doc)
    _tcp("max_downstream_connection_duration", {"seconds": 1, "nanos": 500000000})(doc)
    config = load(tmp_path, doc).listeners[0].filter_chain.filters[0].config
    assert config.idle_timeout is None and config.max_connect_attempts == 3
    assert config.max_downstream_connection_duration == 1.5


def test_weighted_clusters(tmp_path: Path) -> None:
    doc = minimal()
    doc["static_resources"]["clusters"].append(cluster("canary", port=9001))
    _weighted(("backend", 90), ("canary", 10))(doc)
    config = load(tmp_path, doc).listeners[0].filter_chain.filters[0].config
    assert config.cluster is None
    assert [(w.name, w.weight) for w in config.weighted_clusters] == [("backend", 90), ("canary", 10)]
    assert config.cluster_names() == ("backend", "canary")


def test_strict_dns_cluster_never_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("config loading touched the network")

    monkeypatch.setattr(socket, "getaddrinfo", forbidden)
    monkeypatch.setattr(socket, "socket", forbidden)
    doc = minimal()
    doc["static_resources"]["clusters"][0] = cluster(
        address="backend.internal", type="strict_dns", lb_policy="maglev", dns_refresh_rate="0.5s",
        dns_lookup_family="V4_ONLY", connect_timeout="0.25s",
    )
    (c,) = load(tmp_path, doc).clusters
    assert c.type is DiscoveryType.STRICT_DNS and c.lb_policy is LbPolicy.MAGLEV
    assert c.dns_refresh_rate == 0.5 and c.connect_timeout == 0.25
    assert c.endpoints[0].address == SocketAddress("backend.internal", 9000)


def test_endpoint_priorities_and_weights(tmp_path: Path) -> None:
    doc = minimal()
    la = doc["static_resources"]["clusters"][0]["load_assignment"]
    ep = la["endpoints"][0]["lb_endpoints"][0]
    la["endpoints"] = [
        {"locality": {"zone": "a"}, "priority": 0, "lb_endpoints": [{**ep, "load_balancing_weight": 3}]},
        {"locality": {"zone": "b"}, "priority": 1, "load_balancing_weight": 2,
         "lb_endpoints": [{**ep, "health_status": "healthy"}]},
    ]
    c = load(tmp_path, doc).clusters[0]
    assert [(e.priority, e.load_balancing_weight) for e in c.endpoints] == [(0, 3), (1, 1)]


def test_bootstrap_sections(tmp_path: Path) -> None:
    doc = minimal()
    doc.update({
        "node": {"id": "n1", "cluster": "c1", "locality": {"zone": "z"}, "metadata": {"k": "v"}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}},
        "stats_flush_interval": "1s",
        "stats_sinks": [{"name": "envoy.stat_sinks.statsd", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.metrics.v3.StatsdSink",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8125, "protocol": "UDP"}}}}],
        "stats_config": {"use_all_default_tags": False, "stats_matcher": {"exclusion_list": {"patterns": [
            {"prefix": "cluster."}, {"safe_regex": {"regex": "^tcp\\..*"}}]}}},
    })
    b = load(tmp_path, doc)
    assert b.node.id == "n1" and b.node.cluster == "c1" and b.node.locality.zone == "z"
    assert b.admin is not None and b.admin.address.port_value == 9901
    assert b.stats_flush_interval == 1.0
    assert b.stats_sinks[0].address == SocketAddress("127.0.0.1", 8125) and b.stats_sinks[0].prefix == "envoy"
    matcher = b.stats_config.stats_matcher
    assert matcher is not None and matcher.exclusion_list is not None
    assert [m.prefix or m.safe_regex for m in matcher.exclusion_list] == ["cluster.", "^tcp\\..*"]
    assert b.stats_config.use_all_default_tags is False


def test_default_filter_chain_and_unnamed_listener(tmp_path: Path) -> None:
    doc = minimal()
    lst = doc["static_resources"]["listeners"][0]
    del lst["name"]
    lst["default_filter_chain"] = lst.pop("filter_chains")[0]
    (got,) = load(tmp_path, doc).listeners
    assert got.name == "127.0.0.1:10000"


def test_empty_config_is_valid(tmp_path: Path) -> None:
    assert load(tmp_path, "").listeners == ()
    assert load_config([], "{}").clusters == ()


def test_config_d_merges_in_name_order(tmp_path: Path) -> None:
    confd = tmp_path / "conf.d"
    confd.mkdir()
    # Written out of order, and with files that must be skipped.
    write(confd, {"static_resources": {"listeners": [listener(10001, [tcp_proxy_filter(cluster="b")])],
                                       "clusters": [cluster("b")]}}, "20-b.yaml")
    write(confd, {"node": {"id": "first"}, "static_resources": {
        "listeners": [listener(10000)], "clusters": [cluster("backend")]}}, "10-a.yml")
    write(confd, {"node": {"id": "last"}}, "30-node.yaml")
    write(confd, "not: [valid", ".hidden.yaml")
    write(confd, "not: [valid", "README.txt")
    b = load_config([str(confd)])
    assert [x.name for x in b.listeners] == ["l10000", "l10001"]
    assert [c.name for c in b.clusters] == ["backend", "b"]
    assert b.node.id == "last"
    assert b.source_files == tuple(str(confd / n) for n in ("10-a.yml", "20-b.yaml", "30-node.yaml"))


def test_duplicate_cluster_across_files_names_both(tmp_path: Path) -> None:
    confd = tmp_path / "conf.d"
    confd.mkdir()
    write(confd, minimal(), "10-main.yaml")
    write(confd, {"static_resources": {"clusters": [cluster("other"), cluster("backend")]}}, "20-extra.yaml")
    with pytest.raises(ConfigError) as info:
        load_config([str(confd)])
    (error,) = info.value.errors
    assert error.startswith(f"{confd / '20-extra.yaml'}: static_resources.clusters[2].name: ")
    assert "duplicate cluster name 'backend'" in error
    assert f"{confd / '10-main.yaml'}: static_resources.clusters[0]" in error


def test_errors_name_the_file_each_element_came_from(tmp_path: Path) -> None:
    a = write(tmp_path, minimal(), "a.yaml")
    b = write(tmp_path, {"static_resources": {"clusters": [cluster("c2", typo=1)]}}, "b.yaml")
    with pytest.raises(ConfigError) as info:
        load_config([a, b])
    (error,) = info.value.errors
    assert error.startswith(f"{b}: static_resources.clusters[1].typo: unknown field 'typo'")


def test_config_yaml_merges_over_files(tmp_path: Path) -> None:
    path = write(tmp_path, {"node": {"id": "file", "cluster": "c"}, **minimal()})
    extra = "node: {id: override}\n"
    extra += "static_resources: {clusters: [{name: x, load_assignment: {cluster_name: x}}]}"
    b = load_config([path], extra)
    assert b.node.id == "override" and b.node.cluster == "c"
    assert [c.name for c in b.clusters] == ["backend", "x"]


def test_config_yaml_errors_are_attributed_to_it(tmp_path: Path) -> None:
    path = write(tmp_path, minimal())
    with pytest.raises(ConfigError) as info:
        load_config([path], "stats_flush_interval: 10")
    (error,) = info.value.errors
    assert error.startswith("--config-yaml: stats_flush_interval: ")


def test_filter_without_typed_config_is_found_by_name(tmp_path: Path) -> None:
    doc = minimal()
    _filters({"name": "envoy.filters.network.tcp_proxy"})(doc)
    errors = errors_of(tmp_path, doc)
    assert_error(errors, TYPED, "missing required field 'stat_prefix'")


@pytest.mark.parametrize("clusters", [{"name": "backend"}, [{"type": "STATIC"}]], ids=["mapping", "no name"])
def test_unreadable_clusters_do_not_cascade_into_unknown_cluster(tmp_path: Path, clusters: object) -> None:
    doc = minimal()
    doc["static_resources"]["clusters"] = clusters
    errors = errors_of(tmp_path, doc)
    assert not any("unknown cluster" in e for e in errors), errors
