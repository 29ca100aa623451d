"""What every benchmark script shares: installing missing tools, describing the machine, and
meshproxy's tcp_proxy config.

Each script names its own tools (binary -> Debian package) and the versions it reports;
the mechanics live here once.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def missing_packages(tools: Mapping[str, str]) -> list[str]:
    """Debian packages of the binaries in ``tools`` (binary -> package) not on PATH."""
    return sorted({pkg for binary, pkg in tools.items() if shutil.which(binary) is None})


def apt_install(packages: Iterable[str]) -> None:
    """Install ``packages`` with apt-get; ``apt-get update`` first (CI machines start clean)."""
    packages = list(packages)
    if not packages:
        return
    print(f"installing {' '.join(packages)} with apt-get", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update"], check=True, env=env, timeout=600)
    subprocess.run([*sudo, "apt-get", "install", "-y", "--no-install-recommends", *packages],
                   check=True, env=env, timeout=900)


def first_line(argv: list[str]) -> str:
    """The first line a command prints (its version, usually), or why it could not run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def machine_lines(versions: Mapping[str, list[str]]) -> list[str]:
    """CPU, kernel, Python, meshproxy and then ``label: first line of argv`` for each tool."""
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return [
        f"machine: {len(os.sched_getaffinity(0))} CPUs ({cpu}), Linux {platform.release()}",
        f"python: {sys.version.split()[0]}",
        f"meshproxy: {first_line([sys.executable, '-m', 'meshproxy', '--version'])}",
        *(f"{label}: {first_line(argv)}" for label, argv in versions.items()),
    ]


def tcp_proxy_bootstrap(routes: dict[str, tuple[int, int]]) -> dict[str, object]:
    """meshproxy's config (Envoy v3 bootstrap): for each ``name: (listen port, upstream port)``,
    a tcp_proxy listener and a STATIC cluster of that name."""
    listeners, clusters = [], []
    for name, (listen, upstream) in routes.items():
        listeners.append({
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": name,
                    "cluster": name,
                },
            }]}],
        })
        clusters.append({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}},
            }}]}]},
        })
    return {"static_resources": {"listeners": listeners, "clusters": clusters}}
