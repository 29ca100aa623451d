"""The ``meshproxy`` command line as an operator meets it: validate, conf.d, --config-yaml, --version.

Every case runs the real command (``python -m meshproxy``) in a subprocess. The bad
configs are validated concurrently, once per module, to keep the suite fast.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from integration.harness import (
    LOCALHOST,
    REPO_ROOT,
    MeshProxy,
    Upstream,
    bootstrap,
    connect,
    echo_handler,
    listener,
    roundtrip,
    static_cluster,
    tcp_proxy_filter,
    write_yaml,
)

StartProxy = Callable[..., MeshProxy]
StartUpstream = Callable[..., Upstream]

EXAMPLES = REPO_ROOT.parent / "shared" / "reference" / "envoy-examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.y*ml")) if EXAMPLES.is_dir() else []
LISTENER = "static_resources.listeners[0]"
TYPED = f"{LISTENER}.filter_chains[0].filters[0].typed_config"
CLUSTER = "static_resources.clusters[0]"
SOCKET = f"{CLUSTER}.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address"
# A YAML path as errors print it: static_resources.clusters[0].typed_extension_protocol_options["x"].
YAML_PATH = re.compile(r"\b[a-z_]+(?:\.[a-z_@]+|\[\d+\]|\[\"[^\"]+\"\])+")


def meshproxy(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshproxy", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def good_config(listen_port: int = 0, upstream_port: int = 9000) -> dict[str, Any]:
    return bootstrap([listener("main", listen_port, tcp_proxy_filter("backend"))],
                     [static_cluster("backend", [upstream_port])])


def error_lines(stderr: str) -> list[str]:
    """The indented lines under ``configuration '...' is invalid:``."""
    return [line.strip() for line in stderr.splitlines() if line.startswith("  ")]


# ----- validate -------------------------------------------------------------------------------------


def test_validate_good_config_prints_ok(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "good.yaml", good_config())
    result = meshproxy("--mode", "validate", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"configuration '{path}' OK"


def _edit(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set a dotted path in the good config (integers index lists)."""

    def apply(doc: dict[str, Any]) -> None:
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        node: Any = doc
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return apply


def _tcp(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return _edit(f"static_resources.listeners.0.filter_chains.0.filters.0.typed_config.{key}", value)


def _sock(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return _edit(f"static_resources.clusters.0.load_assignment.endpoints.0.lb_endpoints.0.endpoint.address."
                 f"socket_address.{key}", value)


def _rename(path: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        node: Any = doc
        for key in path.split("."):
            node = node[int(key) if key.isdigit() else key]
        node[new] = node.pop(old)

    return apply


GOOD_YAML = json.dumps(good_config())  # JSON is YAML; raw-text cases start from it

Change = Callable[[dict[str, Any]], None] | str
V2_TCP_PROXY = "type.googleapis.com/envoy.config.filter.network.tcp_proxy.v2.TcpProxy"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

# name -> (a change of the good config, or the file's raw text; the fragments one error line must hold)
BAD_CONFIGS: dict[str, tuple[Change, tuple[str, ...]]] = {
    "unknown cluster": (
        _tcp("cluster", "backedn"),
        (f"{TYPED}.cluster", "unknown cluster 'backedn'", "did you mean 'backend'")),
    "misspelt field": (
        _rename("static_resources.listeners.0", "address", "adress"),
        (f"{LISTENER}.adress", "unknown field 'adress'", "did you mean 'address'")),
    "valid Envoy field, not implemented": (
        _edit("static_resources.listeners.0.listener_filters", []),
        (f"{LISTENER}.listener_filters", "is a valid Envoy field but not supported by meshproxy")),
    "duration without a unit": (
        _edit("static_resources.clusters.0.connect_timeout", 5),
        (f"{CLUSTER}.connect_timeout", "got integer 5", "'5s'")),
    "STATIC cluster with a hostname": (
        _sock("address", "backend.internal"),
        (f"{SOCKET}.address", "STATIC cluster needs IP addresses", "STRICT_DNS")),
    "LOGICAL_DNS": (
        _edit("static_resources.clusters.0.type", "LOGICAL_DNS"),
        (f"{CLUSTER}.type", "LOGICAL_DNS is a valid Envoy value but not supported by meshproxy")),
    "v2 type URL": (
        _tcp("@type", V2_TCP_PROXY),
        (f'{TYPED}["@type"]', "v2 API type", "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")),
    "typed_config without @type": (
        lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        .pop("@type"),
        (TYPED, "missing '@type'")),
    "filter not implemented": (
        _tcp("@type", HCM),
        (TYPED, "HttpConnectionManager) is not supported by meshproxy")),
    "port out of range": (
        _edit("static_resources.listeners.0.address.socket_address.port_value", 70000),
        (f"{LISTENER}.address.socket_address.port_value", "expected integer in [0, 65535], got 70000")),
    "listener on a hostname": (
        _edit("static_resources.listeners.0.address.socket_address.address", "localhost"),
        (f"{LISTENER}.address.socket_address.address", "expected an IP address")),
    "duplicate cluster": (
        lambda d: d["static_resources"]["clusters"].append(static_cluster("backend", [9001])),
        ("static_resources.clusters[1].name", "duplicate cluster name 'backend'")),
    "field removed in v3": (
        _edit("static_resources.clusters.0.hosts", []),
        (f"{CLUSTER}.hosts", "field 'hosts' was removed in v3")),
    "invalid YAML": (
        GOOD_YAML[:-1] + ",",
        ("invalid YAML", "line 1, column")),
    "duplicate YAML key": (
        "static_resources: {listeners: []}\nstatic_resources: {clusters: []}\n",
        ("invalid YAML", "duplicate key 'static_resources'")),
}


def validate_concurrently(paths: list[Path]) -> dict[Path, subprocess.CompletedProcess[str]]:
    """``meshproxy --mode validate -c <path>`` for every path, all running at once."""
    argv = [sys.executable, "-m", "meshproxy", "--mode", "validate", "-c"]
    procs = {path: subprocess.Popen([*argv, str(path)],
                                    cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, text=True)
             for path in paths}
    results = {}
    for path, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        results[path] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


@pytest.fixture(scope="module")
def bad_config_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int, str, str]]:
    """Every bad config validated once: name -> (path, exit code, stdout, stderr)."""
    workdir = tmp_path_factory.mktemp("bad_configs")
    paths = {}
    for i, (name, (change, _)) in enumerate(BAD_CONFIGS.items()):
        paths[name] = path = workdir / f"bad{i}.yaml"
        if isinstance(change, str):
            path.write_text(change)
        else:
            doc = copy.deepcopy(good_config())
            change(doc)
            write_yaml(path, doc)
    results = validate_concurrently(list(paths.values()))
    return {name: (path, results[path].returncode, results[path].stdout, results[path].stderr)
            for name, path in paths.items()}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_validate_bad_config_names_the_problem(bad_config_results: dict[str, tuple[Path, int, str, str]],
                                               name: str) -> None:
    path, code, out, err = bad_config_results[name]
    fragments = BAD_CONFIGS[name][1]
    assert code == 1, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert "OK" not in out
    assert err.splitlines()[0] == f"configuration '{path}' is invalid:", err
    lines = error_lines(err)
    assert any(all(f in line for f in fragments) for line in lines), f"no line with {fragments} in:\n{err}"
    assert all(line.startswith(f"{path}: ") for line in lines), f"an error does not name its file:\n{err}"


def test_validate_reports_every_error_at_once(tmp_path: Path) -> None:
    doc = good_config()
    _tcp("cluster", "nope")(doc)
    _edit("static_resources.clusters.0.connect_timeout", "1m")(doc)
    _sock("port_value", 0)(doc)
    path = write_yaml(tmp_path / "three.yaml", doc)
    result = meshproxy("--mode", "validate", "-c", str(path))
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 3, result.stderr
    assert any(f"{TYPED}.cluster" in line for line in lines)
    assert any(f"{CLUSTER}.connect_timeout" in line for line in lines)
    assert any(f"{SOCKET}.port_value" in line for line in lines)


def test_missing_config_file_and_no_config_at_all(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = meshproxy("--mode", "validate", "-c", str(missing))
    assert result.returncode == 1
    assert f"{missing}: no such file or directory" in result.stderr
    result = meshproxy("--mode", "validate")
    assert result.returncode == 2  # click's usage error
    assert "--config-path" in result.stderr


def test_validate_binds_nothing(tmp_path: Path, start_proxy: StartProxy) -> None:
    """Validation succeeds while the config's port is held by someone else; serving does not."""
    with socket.create_server((LOCALHOST, 0)) as holder:
        port = holder.getsockname()[1]
        path = write_yaml(tmp_path / "held.yaml", good_config(listen_port=port))
        result = meshproxy("--mode", "validate", "-c", str(path))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"configuration '{path}' OK"
        # The control: the port really is taken, so a serve of the same file fails to bind.
        proxy = start_proxy(None, config_args=["-c", str(path)], wait=False)
        assert proxy.wait(15.0) != 0
        assert "cannot bind" in proxy.log(), proxy.log_tail()


# ----- config sources --------------------------------------------------------------------------------


def test_conf_d_directory_merges_files(tmp_path: Path, start_proxy: StartProxy,
                                       start_upstream: StartUpstream) -> None:
    upstream = start_upstream(echo_handler)
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    write_yaml(conf_d / "10-listeners.yaml", bootstrap([listener("main", 0, tcp_proxy_filter("backend"))]))
    write_yaml(conf_d / "20-clusters.yaml",
               {"static_resources": {"clusters": [static_cluster("backend", [upstream.port])]}})
    (conf_d / "README.txt").write_text("not yaml: [ignored")  # only *.yaml / *.yml are read
    result = meshproxy("--mode", "validate", "-c", str(conf_d))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"configuration '{conf_d}' OK"
    proxy = start_proxy(None, config_args=["-c", str(conf_d)])
    with connect(proxy.port) as sock:
        assert roundtrip(sock, b"merged") == b"merged"


def test_conf_d_errors_name_the_file_they_come_from(tmp_path: Path) -> None:
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    write_yaml(conf_d / "10-listeners.yaml", bootstrap([listener("main", 0, tcp_proxy_filter("backend"))]))
    bad = static_cluster("backend", [9000], connect_timeout="soon")
    write_yaml(conf_d / "20-clusters.yaml", {"static_resources": {"clusters": [bad]}})
    result = meshproxy("--mode", "validate", "-c", str(conf_d))
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"{conf_d / '20-clusters.yaml'}: {CLUSTER}.connect_timeout: "
        "expected a duration such as '5s' or '0.25s', got 'soon'"
    ]


def test_config_yaml_merges_over_the_file(tmp_path: Path, start_proxy: StartProxy,
                                          start_upstream: StartUpstream) -> None:
    upstream = start_upstream(echo_handler)
    listener_only = bootstrap([listener("main", 0, tcp_proxy_filter("backend"))])
    path = write_yaml(tmp_path / "listener-only.yaml", listener_only)
    extra = json.dumps({"static_resources": {"clusters": [static_cluster("backend", [upstream.port])]}})
    alone = meshproxy("--mode", "validate", "-c", str(path))
    assert alone.returncode == 1
    assert "unknown cluster 'backend'" in alone.stderr
    merged = meshproxy("--mode", "validate", "-c", str(path), "--config-yaml", extra)
    assert merged.returncode == 0, merged.stderr
    assert "OK" in merged.stdout
    proxy = start_proxy(None, config_args=["-c", str(path), "--config-yaml", extra])
    with connect(proxy.port) as sock:
        assert roundtrip(sock, b"merged over") == b"merged over"


def test_config_yaml_alone_serves(start_proxy: StartProxy, start_upstream: StartUpstream) -> None:
    upstream = start_upstream(echo_handler)
    inline = json.dumps(good_config(upstream_port=upstream.port))
    proxy = start_proxy(None, config_args=["--config-yaml", inline])
    with connect(proxy.port) as sock:
        assert roundtrip(sock, b"inline") == b"inline"


# ----- Envoy's examples -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_results() -> dict[Path, subprocess.CompletedProcess[str]]:
    return validate_concurrently(EXAMPLE_FILES)


@pytest.mark.skipif(not EXAMPLE_FILES, reason=f"no Envoy examples at {EXAMPLES}")
@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.name for p in EXAMPLE_FILES])
def test_envoy_example_is_ok_or_names_what_is_not_supported(
        example_results: dict[Path, subprocess.CompletedProcess[str]], path: Path) -> None:
    result = example_results[path]
    if result.returncode == 0:
        assert result.stdout.strip() == f"configuration '{path}' OK"
        return
    assert result.returncode == 1, result.stderr
    lines = error_lines(result.stderr)
    assert lines, result.stderr
    for line in lines:
        assert re.search(r"not supported|unsupported|removed", line), f"not a 'not supported' error: {line}"
        where = line.removeprefix(f"{path}: ")
        assert YAML_PATH.match(where), f"no field path in: {line}"


# ----- other flags ---------------------------------------------------------------------------------------


def test_version() -> None:
    init = (REPO_ROOT / "meshproxy" / "__init__.py").read_text()
    version = re.search(r'__version__ = "([^"]+)"', init)
    assert version is not None
    result = meshproxy("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"meshproxy, version {version[1]}"


def test_unknown_flag_is_a_usage_error() -> None:
    result = meshproxy("--no-such-flag", "-c", "x.yaml")
    assert result.returncode == 2
    assert "--no-such-flag" in result.stderr

