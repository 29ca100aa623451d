"""The gRPC client of a Lyft-style rate-limit service, for the ``ratelimit`` filter.

Calls ``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`` with ``grpc.aio``,
which runs on the worker's uvloop loop. Imported only when a worker builds a listener
with this filter, so neither ``grpcio`` nor the generated protos (``xds-protos``) are
loaded by the main process, by config validation, or by a proxy that does not use them,
and gRPC is never initialised before the fork.

* One client per worker (per filter config); one channel per upstream host of the
  ``envoy_grpc.cluster_name`` cluster, opened when the worker starts (or on first use, for
  a host that appears later) and kept. Each decision picks a host with the cluster's load
  balancer, so STRICT_DNS updates and host weights apply.
* The deadline is the filter's ``timeout``: an answer later than that is an error.
* The request for static descriptors is built once and reused.
* OVER_LIMIT overall → OVER_LIMIT; any other overall code (OK, UNKNOWN) → OK, as in
  Envoy's client. An OK answer is flagged ``near_limit`` when a descriptor status shows
  more than 80% of its limit used (``current_limit`` and ``limit_remaining``, which
  Lyft's service fills in).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from filters.ratelimit.descriptors import Descriptors
from filters.ratelimit.filter import NEAR_LIMIT, Done, LimitStatus

log = logging.getLogger("meshproxy.ratelimit")

NEAR_LIMIT_RATIO = 0.8
_OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT
_OK_CODE = rls_pb2.RateLimitResponse.OK


def build_request(domain: str, descriptors: Descriptors) -> rls_pb2.RateLimitRequest:
    """The ShouldRateLimit request for one connection."""
    descriptor, entry = ratelimit_pb2.RateLimitDescriptor, ratelimit_pb2.RateLimitDescriptor.Entry
    messages = [descriptor(entries=[entry(key=k, value=v) for k, v in d]) for d in descriptors]
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=messages)


def near_limit(response: rls_pb2.RateLimitResponse, ratio: float = NEAR_LIMIT_RATIO) -> bool:
    """Did some descriptor use more than ``ratio`` of its limit (Lyft's near-limit rule)?"""
    for status in response.statuses:
        limit = status.current_limit.requests_per_unit if status.HasField("current_limit") else 0
        if status.code == _OK_CODE and limit and limit - status.limit_remaining > math.floor(limit * ratio):
            return True
    return False


async def _call(stub: Any, request: rls_pb2.RateLimitRequest, timeout: float) -> rls_pb2.RateLimitResponse:
    return await stub.ShouldRateLimit(request, timeout=timeout)


class GrpcRateLimitClient:
    """A ``LimitClient`` over gRPC (see ``filters.ratelimit.filter``)."""

    def __init__(self, cluster: Any, domain: str, timeout: float, authority: str,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.cluster = cluster
        self.domain = domain
        self.timeout = timeout
        self.authority = authority
        self.loop = loop
        self._stubs: dict[tuple[str, int], Any] = {}
        self._last_descriptors: Descriptors | None = None
        self._last_request: rls_pb2.RateLimitRequest | None = None

    def start(self) -> None:
        """Connect to the cluster's hosts before the first decision needs it (an HTTP/2
        handshake costs more than the default 20 ms timeout on a busy host)."""
        for host in getattr(self.cluster, "hosts", ()):
            self._stub(host.address, host.port)

    def limit(self, descriptors: Descriptors, done: Done) -> asyncio.Task[Any] | None:
        host = self.cluster.choose_host()
        if host is None:
            self.cluster.stats.upstream_cx_none_healthy.inc()
            done(LimitStatus.ERROR, 0)
            return None
        if descriptors is self._last_descriptors:  # static descriptors: the same tuple every time
            request = self._last_request
        else:
            request = build_request(self.domain, descriptors)
            self._last_descriptors, self._last_request = descriptors, request
        task = self.loop.create_task(_call(self._stub(host.address, host.port), request, self.timeout))
        task.add_done_callback(lambda t: self._finished(t, done))
        return task

    def _stub(self, address: str, port: int) -> Any:
        stub = self._stubs.get((address, port))
        if stub is None:
            target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            channel = grpc.aio.insecure_channel(target, options=[("grpc.default_authority", self.authority)])
            channel.get_state(try_to_connect=True)
            stub = self._stubs[(address, port)] = rls_pb2_grpc.RateLimitServiceStub(channel)
        return stub

    @staticmethod
    def _finished(task: asyncio.Task[rls_pb2.RateLimitResponse], done: Done) -> None:
        if task.cancelled():  # the connection closed first
            return
        exc = task.exception()
        if exc is not None:
            if log.isEnabledFor(logging.DEBUG):
                if isinstance(exc, grpc.aio.AioRpcError):
                    log.debug("ShouldRateLimit failed: %s: %s", exc.code().name, exc.details())
                else:
                    log.debug("ShouldRateLimit failed: %r", exc)
            done(LimitStatus.ERROR, 0)
            return
        response = task.result()
        if response.overall_code == _OVER_LIMIT:
            done(LimitStatus.OVER_LIMIT, 0)
        else:
            done(LimitStatus.OK, NEAR_LIMIT if near_limit(response) else 0)
