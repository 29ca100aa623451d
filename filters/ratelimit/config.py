"""ratelimit configuration: ``envoy.extensions.filters.network.ratelimit.v3.RateLimit``.

Fields (envoy-subset.md §5.5): ``stat_prefix``, ``domain``, ``descriptors`` (≥ 1; values
may use the connection command operators of descriptors.py), ``timeout`` (20 ms),
``failure_mode_deny`` (false: fail open) and ``rate_limit_service``:
``grpc_service.envoy_grpc.cluster_name`` names the cluster of Lyft-style rate-limit
servers, called with ``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit``;
``transport_api_version`` is V3 (Envoy refuses the others). ``grpc_service.timeout`` is
accepted; as in Envoy the filter's ``timeout`` is the one that applies.
"""

from __future__ import annotations

import enum
import importlib.util
from dataclasses import dataclass
from typing import Any

from filters.config_schema import (
    Message,
    Oneof,
    ParseContext,
    as_dict,
    boolean,
    cluster_ref,
    duration,
    enum_field,
    message,
    string,
    unsupported,
)
from filters.ratelimit.descriptors import DescriptorSet, descriptor_set

DEFAULT_TIMEOUT_S = 0.020


class ApiVersion(enum.Enum):
    V3 = 2


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    stat_prefix: str
    domain: str
    descriptors: DescriptorSet
    timeout: float
    failure_mode_deny: bool
    cluster: str
    authority: str


_ENVOY_GRPC: Message[dict[str, Any]] = Message(
    "envoy.config.core.v3.GrpcService.EnvoyGrpc",
    fields={"cluster_name": cluster_ref(required=True), "authority": string("")},
    unsupported=unsupported("retry_policy", "max_receive_message_length", "skip_envoy_headers"),
    build=as_dict,
)

_GRPC_SERVICE: Message[dict[str, Any]] = Message(
    "envoy.config.core.v3.GrpcService",
    fields={"envoy_grpc": message(_ENVOY_GRPC), "timeout": duration(None)},
    unsupported=unsupported("google_grpc", "initial_metadata", "retry_policy"),
    oneofs=(Oneof(("envoy_grpc", "google_grpc"), required=True),),
    build=as_dict,
)

_RATE_LIMIT_SERVICE: Message[dict[str, Any]] = Message(
    "envoy.config.ratelimit.v3.RateLimitServiceConfig",
    fields={"grpc_service": message(_GRPC_SERVICE, required=True),
            "transport_api_version": enum_field(ApiVersion, ApiVersion.V3, envoy_only=("AUTO", "V2"))},
    build=as_dict,
)


def grpc_available() -> bool:
    """Whether grpcio and the generated protos are installed (checked without importing them)."""
    try:
        return all(importlib.util.find_spec(name) is not None
                   for name in ("grpc", "envoy.service.ratelimit.v3.rls_pb2"))
    except ImportError:
        return False


def _build(f: dict[str, Any], ctx: ParseContext, path: str) -> RateLimitConfig | None:
    if not grpc_available():
        ctx.error(path, "the ratelimit filter needs grpcio and xds-protos: pip install 'meshproxy[grpc]'")
        return None
    envoy_grpc = f["rate_limit_service"]["grpc_service"]["envoy_grpc"]
    return RateLimitConfig(
        stat_prefix=f["stat_prefix"],
        domain=f["domain"],
        descriptors=f["descriptors"],
        timeout=f["timeout"],
        failure_mode_deny=f["failure_mode_deny"],
        cluster=envoy_grpc["cluster_name"],
        authority=envoy_grpc["authority"] or envoy_grpc["cluster_name"],
    )


RATE_LIMIT: Message[RateLimitConfig] = Message(
    "envoy.extensions.filters.network.ratelimit.v3.RateLimit",
    fields={
        "stat_prefix": string(required=True, min_len=1),
        "domain": string(required=True, min_len=1),
        "descriptors": descriptor_set(),
        "timeout": duration(DEFAULT_TIMEOUT_S, gt=0),
        "failure_mode_deny": boolean(False),
        "rate_limit_service": message(_RATE_LIMIT_SERVICE, required=True),
    },
    build=_build,
)


def parse(typed_config: dict[str, Any], ctx: ParseContext) -> RateLimitConfig | None:
    """Compile a ratelimit ``typed_config`` (without ``@type``); None if it had errors."""
    return RATE_LIMIT.parse(typed_config, ctx)
