"""Fixtures of the integration tests: meshproxy processes and upstream servers, torn down always.

A failed test gets the tail of each of its meshproxy logs printed at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.harness import MeshProxy, Upstream


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    reports = (getattr(request.node, f"rep_{when}", None) for when in ("setup", "call"))
    return any(report is not None and report.failed for report in reports)


@pytest.fixture
def start_proxy(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., MeshProxy]]:
    """``start_proxy(config, **MeshProxy options)`` starts meshproxy and waits until it serves."""
    proxies: list[MeshProxy] = []

    def start(config: dict[str, Any] | None, *, wait: bool = True, **options: Any) -> MeshProxy:
        name = options.pop("name", f"meshproxy{len(proxies)}")
        proxy = MeshProxy(tmp_path, config, name=name, **options)
        proxies.append(proxy)
        return proxy.start(wait=wait)

    yield start
    failed = _failed(request)
    for proxy in proxies:
        proxy.kill()
        if failed:
            print(proxy.log_tail(60))


@pytest.fixture
def start_upstream() -> Iterator[Callable[..., Upstream]]:
    """``start_upstream(handler)`` runs a threaded TCP server on 127.0.0.1 for this test."""
    servers: list[Upstream] = []

    def start(handler: Callable[..., None], **options: Any) -> Upstream:
        server = Upstream(handler, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
