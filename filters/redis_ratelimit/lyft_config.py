"""Limits in the config format of Lyft's rate-limit service (envoyproxy/ratelimit), and its matching.

So that teams keep the files they already run Lyft's service with::

    domain: mongo_cps
    descriptors:
      - key: database
        value: users
        rate_limit: {unit: second, requests_per_unit: 500}
      - key: remote_address            # no value: each address gets its own counter
        rate_limit: {unit: minute, requests_per_unit: 100}
        shadow_mode: true              # counted and reported, never enforced
      - key: client
        value: batch*                  # a trailing * matches values by prefix
        descriptors:                   # nested: matched against the next entry
          - key: method
            rate_limit: {unlimited: true}

Keys are Lyft's (``src/config/config_impl.go``): ``domain``; per descriptor ``key``,
``value``, ``rate_limit{requests_per_unit, unit, unlimited, name}``, ``descriptors``,
``shadow_mode``, ``detailed_metric``. Units: second, minute, hour, day, week, month
(30 days), year (365 days), case-insensitive. As in Lyft: an empty key, a duplicate
key/value at one level, an unknown unit, or a unit together with ``unlimited`` is an
error. ``detailed_metric`` only shapes Lyft's per-descriptor stat names, which meshproxy
never makes, so it is accepted and has no effect. ``replaces`` is refused (not
implemented), never ignored. Unlike Lyft, a key at the wrong level is an error too.

Matching is Lyft's ``GetLimit``: the request's entries are walked level by level; at each
level ``key_value`` is tried, then a ``value*`` prefix, then the bare ``key`` (the
default for any value). A limit applies only if it sits on the node matched by the
**last** entry; running out of config levels first means no limit.

Files are read with YAML's base loader, so every scalar is its source text, as Go's
yaml.v2 gives a string field (``value: 010`` stays ``010``, ``value: yes`` stays ``yes``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import yaml


class Unit(enum.Enum):
    """Lyft's units and their length in seconds (``utils.UnitToDivider``)."""

    SECOND = 1
    MINUTE = 60
    HOUR = 3600
    DAY = 86400
    WEEK = 7 * 86400
    MONTH = 30 * 86400
    YEAR = 365 * 86400


@dataclass(frozen=True, slots=True)
class RateLimitRule:
    requests_per_unit: int
    unit: Unit | None  # None when unlimited
    unlimited: bool = False
    shadow_mode: bool = False
    name: str = ""
    full_key: str = ""  # Lyft's "domain.key_value.key" (for logs and errors, never a stat name)


@dataclass(frozen=True, eq=False)
class DescriptorNode:
    limit: RateLimitRule | None = None
    children: Mapping[str, DescriptorNode] = field(default_factory=dict)  # by "key_value" or "key"
    wildcards: tuple[tuple[str, DescriptorNode], ...] = ()  # ("key_prefix", node) for "value*"


@dataclass(frozen=True, eq=False)
class LimitConfig:
    """One domain's limits, compiled."""

    domain: str
    root: DescriptorNode

    def find(self, entries: tuple[tuple[str, str], ...]) -> RateLimitRule | None:
        """The limit for one request descriptor, by Lyft's rules; None when nothing applies."""
        node = self.root
        last = len(entries) - 1
        for i, (key, value) in enumerate(entries):
            composite = f"{key}_{value}"
            nxt = node.children.get(composite)
            if nxt is None:
                for prefix, candidate in node.wildcards:
                    if composite.startswith(prefix):
                        nxt = candidate
                        break
            if nxt is None:
                nxt = node.children.get(key)
            if nxt is None:
                return None
            if i == last:
                return nxt.limit
            if not nxt.children and not nxt.wildcards:
                return None  # the request goes deeper than the config
            node = nxt
        return None


class LyftConfigError(ValueError):
    """Every problem of one file, one per line, each as ``<path>: <what is wrong>``."""


_ROOT_KEYS: Final = frozenset({"domain", "descriptors"})
_DESCRIPTOR_KEYS: Final = frozenset({"key", "value", "rate_limit", "descriptors", "shadow_mode",
                                     "detailed_metric"})
_RATE_LIMIT_KEYS: Final = frozenset({"requests_per_unit", "unit", "unlimited", "name"})
_NOT_SUPPORTED: Final = frozenset({"replaces"})
_TRUE: Final = frozenset({"true", "yes", "on", "y"})
_FALSE: Final = frozenset({"false", "no", "off", "n"})


class _Parser:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}" if path else message)

    def mapping(self, value: object, path: str, allowed: frozenset[str]) -> dict[str, object] | None:
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {type(value).__name__}")
            return None
        for key in value:
            where = f"{path}.{key}" if path else str(key)
            if key in _NOT_SUPPORTED:
                self.error(where, f"'{key}' is a valid ratelimit key but not supported by meshproxy")
            elif key not in allowed:
                self.error(where, f"unknown key '{key}' (expected one of {', '.join(sorted(allowed))})")
        return value

    def text(self, value: object, path: str) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.error(path, f"expected text, got {type(value).__name__} (quote it)")
            return ""
        return str(value)

    def boolean(self, value: object, path: str) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        self.error(path, f"expected true or false, got {value!r}")
        return False

    def uint32(self, value: object, path: str) -> int:
        try:
            number = int(value) if isinstance(value, int | str) and not isinstance(value, bool) else -1
        except ValueError:
            number = -1
        if not 0 <= number <= 2**32 - 1:
            self.error(path, f"expected an integer in [0, 4294967295], got {value!r}")
            return 0
        return number

    def rate_limit(self, value: object, path: str, full_key: str, shadow: bool) -> RateLimitRule | None:
        rl = self.mapping(value, path, _RATE_LIMIT_KEYS)
        if rl is None:
            return None
        unlimited = self.boolean(rl["unlimited"], f"{path}.unlimited") if "unlimited" in rl else False
        unit_text = self.text(rl.get("unit", ""), f"{path}.unit").upper()
        unit = Unit.__members__.get(unit_text)
        if unlimited and unit is not None:
            self.error(path, "should not specify rate limit unit when unlimited")
        elif not unlimited and unit is None:
            self.error(f"{path}.unit", f"invalid rate limit unit '{rl.get('unit', '')}' "
                       f"(expected one of {', '.join(u.name.lower() for u in Unit)})")
        rpu = self.uint32(rl.get("requests_per_unit", 0), f"{path}.requests_per_unit")
        name = self.text(rl.get("name", ""), f"{path}.name")
        return RateLimitRule(rpu, None if unlimited else unit, unlimited, shadow, name, full_key)

    def level(self, value: object, path: str, parent_key: str) -> DescriptorNode:
        """One level of ``descriptors``, as the node that holds it."""
        children: dict[str, DescriptorNode] = {}
        wildcards: list[tuple[str, DescriptorNode]] = []
        if not isinstance(value, list):
            self.error(path, f"expected a list, got {type(value).__name__}")
            return DescriptorNode()
        for i, item in enumerate(value):
            where = f"{path}[{i}]"
            d = self.mapping(item, where, _DESCRIPTOR_KEYS)
            if d is None:
                continue
            key = self.text(d.get("key", ""), f"{where}.key")
            if not key:
                self.error(where, "descriptor has empty key")
                continue
            val = self.text(d["value"], f"{where}.value") if d.get("value") is not None else ""
            final_key = f"{key}_{val}" if val else key
            full_key = parent_key + final_key
            if final_key in children:
                self.error(where, f"duplicate descriptor composite key '{full_key}'")
                continue
            shadow = self.boolean(d["shadow_mode"], f"{where}.shadow_mode") if "shadow_mode" in d else False
            if "detailed_metric" in d:
                self.boolean(d["detailed_metric"], f"{where}.detailed_metric")
            limit = (self.rate_limit(d["rate_limit"], f"{where}.rate_limit", full_key, shadow)
                     if d.get("rate_limit") is not None else None)
            nested = d.get("descriptors")
            below = DescriptorNode() if nested is None else self.level(nested, f"{where}.descriptors",
                                                                        full_key + ".")
            node = DescriptorNode(limit, below.children, below.wildcards)
            children[final_key] = node
            if final_key.endswith("*"):
                wildcards.append((final_key[:-1], node))
        return DescriptorNode(None, children, tuple(wildcards))


def parse_lyft_config(document: object) -> LimitConfig:
    """Compile one parsed Lyft config document; raises ``LyftConfigError`` listing every problem."""
    parser = _Parser()
    root = parser.mapping(document, "", _ROOT_KEYS)
    if root is None:
        raise LyftConfigError("\n".join(parser.errors))
    domain = parser.text(root.get("domain", ""), "domain")
    if not domain and not parser.errors:
        parser.error("domain", "config file cannot have empty domain")
    node = parser.level(root.get("descriptors") or [], "descriptors", domain + ".")
    if parser.errors:
        raise LyftConfigError("\n".join(parser.errors))
    return LimitConfig(domain, node)


def load_lyft_file(path: str) -> LimitConfig:
    """Read and compile a Lyft config file (OSError, LyftConfigError)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        document = yaml.load(text, Loader=yaml.BaseLoader)  # every scalar as its source text, as yaml.v2
    except yaml.YAMLError as exc:
        raise LyftConfigError(f"error loading config file: {exc}") from None
    return parse_lyft_config(document)
