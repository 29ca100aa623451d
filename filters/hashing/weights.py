"""Host names and normalized weights, computed the way Envoy's hashing load balancers do.

Both RING_HASH and MAGLEV are built from a list of ``(host key, normalized weight)`` pairs
(``ThreadAwareLoadBalancerBase::refresh`` in
``source/extensions/load_balancing_policies/common/thread_aware_lb_impl.cc``):

* The **host key** is the string hashed for the host: ``address()->asString()``, i.e.
  ``"10.0.0.1:6379"`` or ``"[2001:db8::1]:6379"``, or the endpoint's hostname when
  ``consistent_hashing_lb_config.use_hostname_for_hashing`` is set. ``host_key`` formats an
  address exactly like Envoy (``inet_ntop`` text, IPv6 in brackets).
* The **normalized weight** of a host is ``weight / sum(weights)`` as a double
  (``normalizeHostWeights``). With ``locality_weighted_lb_config`` it is
  ``weight * (locality_weight / sum(locality_weights)) / sum(weights in locality)``, and
  localities of weight 0 are left out (``normalizeLocalityWeights``). The floating-point
  operations are done in Envoy's order, because ring sizes and Maglev fill order depend on the
  exact doubles.

Only healthy hosts are passed in (all hosts when the priority is in panic); that choice belongs
to the cluster, not here.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

#: ``(host key, normalized weight)`` pairs, in the order the load balancer is built from.
NormalizedHosts = Sequence[tuple[str, float]]


def host_key(ip: str, port: int) -> str:
    """Envoy's ``Address::Ipv4Instance/Ipv6Instance::asString()`` for ``ip`` and ``port``."""
    if ":" in ip:
        text = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, ip))
        return f"[{text}]:{port}"
    text = socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, ip))
    return f"{text}:{port}"


def normalize_host_weights(
    hosts: Sequence[tuple[str, int]], locality_weight: float = 1.0
) -> list[tuple[str, float]]:
    """``(key, weight)`` pairs to ``(key, weight * locality_weight / total)``.

    Weights are Envoy's ``load_balancing_weight`` (1..2**32-1, validated by the config); their
    sum must fit in 32 bits, as Envoy checks.
    """
    total = 0
    for key, weight in hosts:
        if weight < 1:
            raise ValueError(f"host {key!r}: weight must be at least 1, got {weight}")
        total += weight
    if total > 0xFFFFFFFF:
        raise ValueError(f"the sum of host weights ({total}) does not fit in 32 bits")
    return [(key, weight * locality_weight / total) for key, weight in hosts]


def normalize_locality_weights(
    localities: Sequence[tuple[int, Sequence[tuple[str, int]]]],
) -> list[tuple[str, float]]:
    """``[(locality_weight, [(key, weight), ...]), ...]`` to normalized pairs, Envoy-exact.

    A locality of weight 0 contributes no host; if every locality weighs 0 the result is empty
    (no host can be chosen), as in Envoy.
    """
    total = sum(weight for weight, _ in localities)
    if total > 0xFFFFFFFF:
        raise ValueError(f"the sum of locality weights ({total}) does not fit in 32 bits")
    if total == 0:
        return []
    out: list[tuple[str, float]] = []
    for weight, hosts in localities:
        if weight != 0 and hosts:
            out.extend(normalize_host_weights(hosts, weight / total))
    return out


def weight_bounds(normalized: NormalizedHosts) -> tuple[float, float]:
    """``(min, max)`` normalized weight, starting from Envoy's initial values ``(1.0, 0.0)``."""
    lowest, highest = 1.0, 0.0
    for _, weight in normalized:
        lowest = min(lowest, weight)
        highest = max(highest, weight)
    return lowest, highest
