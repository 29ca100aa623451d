"""Tag extraction: Envoy's default extractors turning a flat stat name into a
tag-extracted name plus tags (envoy-subset.md §8.1).

``cluster.svc.upstream_rq_200`` becomes ``cluster.upstream_rq`` with the tags
``envoy.response_code=200`` and ``envoy.cluster_name=svc``. The rules follow Envoy's
``TagProducerImpl`` and the default table of ``well_known_names.cc``:

* There are two kinds of extractor. A *regex* extractor searches the name (RE2
  ``PartialMatch`` semantics = Python ``re.search``); group 1 is the span removed from
  the name, group 2 (when non-empty) the tag value. A *tokenized* extractor matches the
  dot-separated tokens against a pattern such as ``mongo.*.cmd.$.**`` (``*`` one token,
  ``**`` any number, ``$`` the captured token); the captured token is removed with the
  dot that follows it (or the one before it when it is the last token).
* An extractor whose pattern starts with a literal first token (``^cluster\\.`` or
  ``cluster.$.**``) only runs on names with that first token. Extractors without one
  run first, then those of the name's first token, each group in table order (regex
  descriptors before tokenized ones, as Envoy registers them). That is the tag order.
* Every extractor sees the *original* name; the removed spans are merged and cut out
  at the end. A regex extractor may also carry a substring that must be present (a
  cheap pre-check) and a value it must not capture (``listener.admin.`` is not a
  listener address).
* When two extractors have the same tag name (``envoy.http_conn_manager_prefix``), only
  the first that matches adds a tag.

Names are few and reused, so results are cached per name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

Tags = tuple[tuple[str, str], ...]

# Envoy's regex shorthands (well_known_names.cc ``expandRegex``).
_EXPANSIONS: Final = (
    ("<ADDRESS>", r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)"),
    ("<CIPHER>", r"[\w-]+"),
    ("<TLS_VERSION>", r"TLSv\d\.\d"),
    ("<TAG_VALUE>", r"[^\.]+"),
    ("<ROUTE_CONFIG_NAME>", r"[\w\-\.]+"),
    ("<LISTENER_OR_CLUSTER_WITH_NAME>", r"(?:listener|cluster)\..*?"),
)
_PREFIX_RE: Final = re.compile(r"\^(\w+)(?:\\\.|\(\?=\\\.\))", re.ASCII)


def _expand(pattern: str) -> str:
    for key, value in _EXPANSIONS:
        pattern = pattern.replace(key, value)
    return pattern


@dataclass(frozen=True, slots=True)
class RegexExtractor:
    """A regex descriptor: group 1 is removed, group 2 (or 1) is the value."""

    name: str
    regex: re.Pattern[str]
    substr: str = ""
    negative: str = ""

    @property
    def prefix(self) -> str:
        # Envoy's extractRegexPrefix: "^word\." or "^word(?=\.)" gives "word".
        m = _PREFIX_RE.match(self.regex.pattern)
        return m.group(1) if m else ""

    def extract(self, name: str, tokens: Sequence[str]) -> tuple[str, int, int] | None:
        """``(value, start, end)`` of the span to remove, or None."""
        if self.substr and self.substr not in name:
            return None
        m = self.regex.search(name)
        if m is None or not m.group(1):
            return None
        value = m.group(2) or m.group(1)
        if self.negative and value == self.negative:
            return None
        return value, m.start(1), m.end(1)


@dataclass(frozen=True, slots=True)
class TokenExtractor:
    """A tokenized descriptor such as ``redis.$.**``."""

    name: str
    pattern: tuple[str, ...]

    @property
    def prefix(self) -> str:
        first = self.pattern[0]
        return "" if first in ("$", "*", "**") else first

    def extract(self, name: str, tokens: Sequence[str]) -> tuple[str, int, int] | None:
        capture = [-1, 0]  # captured token index, its character offset
        if not self._search(tokens, 0, 0, 0, capture) or capture[0] < 0:
            return None
        index, start = capture
        value = tokens[index]
        end = start + len(value)
        if index < len(tokens) - 1:
            end += 1  # the dot before the next token
        elif start > 0:
            start -= 1  # last token: the dot before it
        return value, start, end

    def _search(self, tokens: Sequence[str], i: int, p: int, char: int, capture: list[int]) -> bool:
        """Whether ``tokens[i:]`` (starting at offset ``char``) match ``pattern[p:]``."""
        pattern = self.pattern
        while i < len(tokens) and p < len(pattern):
            expected = pattern[p]
            if expected == "$":
                capture[0], capture[1] = i, char
            elif expected == "**":
                if p == len(pattern) - 1:
                    return True  # a trailing "**" takes the (non-empty) rest
                # "**" inside the pattern: try the rest of the pattern at every suffix.
                for j in range(i, len(tokens)):
                    if self._search(tokens, j, p + 1, char, capture):
                        return True
                    char += len(tokens[j]) + 1
                return False
            elif expected != "*" and expected != tokens[i]:
                return False
            char += len(tokens[i]) + 1
            i += 1
            p += 1
        return p == len(pattern) and i == len(tokens)


Extractor = RegexExtractor | TokenExtractor


def _re(name: str, regex: str, substr: str = "", negative: str = "") -> RegexExtractor:
    return RegexExtractor(name, re.compile(_expand(regex), re.ASCII), substr, negative)


def _tok(name: str, pattern: str) -> TokenExtractor:
    return TokenExtractor(name, tuple(pattern.split(".")))


# Envoy's defaults, in registration order (regex descriptors, then tokenized ones).
DEFAULT_EXTRACTORS: Final[tuple[Extractor, ...]] = (
    _re("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_"),
    _re("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_"),
    # The misspelt tag name and the bare "cipher_suite" are Envoy's own.
    _re("envoy.dyanmodb_partition_id",
        r"^http\.<TAG_VALUE>\.dynamodb\.table\.<TAG_VALUE>\.capacity\.<TAG_VALUE>(\.__partition_id=(\w{7}))$",
        ".dynamodb.table."),
    _re("envoy.dynamo_operation",
        r"^http\.<TAG_VALUE>\.dynamodb.(?:operation|table\.<TAG_VALUE>\.capacity)(\.(<TAG_VALUE>))(?:\.|$)",
        ".dynamodb."),
    _re("envoy.dynamo_table", r"^http\.<TAG_VALUE>\.dynamodb.(?:table|error)\.((<TAG_VALUE>)\.)",
        ".dynamodb."),
    _re("envoy.ssl_cipher", r"^listener\..*?\.ssl\.ciphers(\.(<CIPHER>))$", ".ssl.ciphers."),
    _re("envoy.ssl_curve", r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.curves(\.(<CIPHER>))$", ".ssl.curves."),
    _re("envoy.ssl_sigalg", r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.sigalgs(\.(<CIPHER>))$",
        ".ssl.sigalgs."),
    _re("envoy.ssl_version", r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.versions(\.(<TLS_VERSION>))$",
        ".ssl.versions."),
    _re("cipher_suite", r"^cluster\.<TAG_VALUE>\.ssl\.ciphers(\.(<CIPHER>))$", ".ssl.ciphers."),
    _re("envoy.http_conn_manager_prefix", r"^listener\..*?\.http\.((<TAG_VALUE>)\.)", ".http."),
    _re("envoy.worker_id",
        r"^(?:listener\.(?:<ADDRESS>|<TAG_VALUE>)\.|server\.|listener_manager\.)worker_((\d+)\.)"),
    _re("envoy.listener_address", r"^listener\.((<ADDRESS>|<TAG_VALUE>)\.)", "", "admin"),
    _re("envoy.rds_route_config", r"^http\.<TAG_VALUE>\.rds\.((<ROUTE_CONFIG_NAME>)\.)\w+?$", ".rds."),
    _tok("envoy.mongo_callsite", "mongo.*.collection.*.callsite.$.query.**"),
    _tok("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
    _tok("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
    _tok("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
    _tok("envoy.http_user_agent", "http.*.user_agent.$.**"),
    _tok("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
    _tok("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
    _tok("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
    _tok("envoy.tcp_prefix", "tcp.$.**"),
    _tok("envoy.udp_prefix", "udp.$.**"),
    _tok("envoy.clientssl_prefix", "auth.clientssl.$.**"),
    _tok("envoy.ratelimit_prefix", "ratelimit.$.**"),
    _tok("envoy.cluster_name", "cluster.$.**"),
    _tok("envoy.ext_authz_prefix", "cluster.*.ext_authz.$.**"),
    _tok("envoy.ext_authz_prefix", "http.*.ext_authz.$.**"),
    _tok("envoy.http_conn_manager_prefix", "http.$.**"),
    _tok("envoy.virtual_host", "vhost.$.**"),
    _tok("envoy.mongo_prefix", "mongo.$.**"),
    _tok("envoy.route", "vhost.*.route.$.**"),
    _tok("envoy.thrift_prefix", "thrift.$.**"),
    _tok("envoy.redis_prefix", "redis.$.**"),
    _tok("envoy.local_http_ratelimit_prefix", "$.http_local_rate_limit.**"),
    _tok("envoy.local_network_ratelimit_prefix", "local_rate_limit.$.**"),
    _tok("envoy.local_listener_ratelimit_prefix", "listener_local_ratelimit.$.**"),
    _tok("envoy.dns_filter_prefix", "dns_filter.$.**"),
)

# Distinct stat names are bounded by the segment's budget; this only guards memory if a
# caller feeds unbounded names.
_CACHE_LIMIT: Final = 1 << 16


class TagProducer:
    """Applies extractors in Envoy's order; ``produce(name)`` is cached."""

    def __init__(self, extractors: Iterable[Extractor] = DEFAULT_EXTRACTORS) -> None:
        self._unprefixed: list[Extractor] = []
        self._by_prefix: dict[str, list[Extractor]] = {}
        seen: set[str] = set()
        self._duplicated: set[str] = set()
        for extractor in extractors:
            if extractor.name in seen:
                self._duplicated.add(extractor.name)
            seen.add(extractor.name)
            prefix = extractor.prefix
            if prefix:
                self._by_prefix.setdefault(prefix, []).append(extractor)
            else:
                self._unprefixed.append(extractor)
        self._cache: dict[str, tuple[str, Tags]] = {}

    def produce(self, name: str) -> tuple[str, Tags]:
        """``(tag-extracted name, ((tag name, value), ...))`` for the stat ``name``."""
        cached = self._cache.get(name)
        if cached is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            cached = self._cache[name] = self._produce(name)
        return cached

    def _produce(self, name: str) -> tuple[str, Tags]:
        tokens = name.split(".")
        extractors = self._unprefixed + self._by_prefix.get(tokens[0], []) if len(tokens) > 1 \
            else self._unprefixed
        tags: list[tuple[str, str]] = []
        spans: list[tuple[int, int]] = []
        done: set[str] = set()
        for extractor in extractors:
            if extractor.name in done:
                continue
            found = extractor.extract(name, tokens)
            if found is None:
                continue
            value, start, end = found
            tags.append((extractor.name, value))
            spans.append((start, end))
            if extractor.name in self._duplicated:
                done.add(extractor.name)
        return _remove_spans(name, spans), tuple(tags)


def _remove_spans(name: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return name
    out: list[str] = []
    pos = 0
    for start, end in sorted(spans):
        if start > pos:
            out.append(name[pos:start])
        pos = max(pos, end)
    out.append(name[pos:])
    return "".join(out)


_default: TagProducer | None = None


def default_producer() -> TagProducer:
    """The shared producer with Envoy's default extractors (built on first use)."""
    global _default
    if _default is None:
        _default = TagProducer()
    return _default
