"""The custom filter of docs/filters.md, loaded with --filter-module, in a real proxy."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from integration.harness import (
    LOCALHOST,
    REPO_ROOT,
    MeshProxy,
    Upstream,
    bootstrap,
    echo_handler,
    listener,
    roundtrip,
    static_cluster,
    tcp_proxy_filter,
    time_until_closed,
    write_yaml,
)

EXAMPLES = REPO_ROOT / "docs" / "examples"


def allowlist(*cidrs: str) -> dict:
    return {"name": "mycompany.allowlist",
            "typed_config": {"@type": "type.googleapis.com/mycompany.filters.AllowList",
                             "cidrs": list(cidrs)}}


def config(upstream: int, *cidrs: str) -> dict:
    return bootstrap([listener("main", 0, allowlist(*cidrs), tcp_proxy_filter("backend"))],
                     [static_cluster("backend", [upstream])])


def test_allowlist_filter_admits_listed_and_closes_others(
        start_proxy: Callable[..., MeshProxy], start_upstream: Callable[..., Upstream],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLES))  # the proxy process imports the example from here
    upstream = start_upstream(echo_handler)
    allowed = start_proxy(config(upstream.port, "127.0.0.0/8"), extra_args=["--filter-module", "allowlist"],
                          name="allowed")
    with socket.create_connection((LOCALHOST, allowed.port), timeout=5) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
    denied = start_proxy(config(upstream.port, "10.0.0.0/8"), extra_args=["--filter-module", "allowlist"],
                         name="denied")
    with socket.create_connection((LOCALHOST, denied.port), timeout=5) as sock:
        sock.sendall(b"hello")
        assert time_until_closed(sock, 5.0) < 2.0
    # The allowed proxy's readiness probe and our connection; nothing from the denied one.
    assert upstream.accepted == 2


def test_allowlist_bad_cidr_is_a_config_error(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", config(1, "10.0.0.0/33"))
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES)}
    result = subprocess.run([sys.executable, "-m", "meshproxy", "--mode", "validate", "-c", str(path),
                             "--filter-module", "allowlist"], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "filters[0].typed_config.cidrs[0]: expected a CIDR" in result.stderr
