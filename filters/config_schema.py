"""A small declarative schema toolkit for Envoy v3 YAML, shared by the bootstrap and every filter.

A proto message is declared once as a ``Message``: its supported fields (each a ``Field``
with a parse function, a default and a ``required`` flag), the Envoy fields we know but do
not implement, fields removed in v3, and oneof groups. ``Message.parse(value, ctx, path)``
walks a YAML mapping and:

* parses every supported field, filling defaults for absent ones (``null`` = absent, as in
  proto JSON);
* reports a valid-Envoy-but-unimplemented field as ``field 'x' is a valid Envoy field but
  not supported by meshproxy`` and any other field as ``unknown field 'x'`` with a
  did-you-mean suggestion;
* checks required fields and oneof groups;
* calls the message's ``build`` hook with the parsed fields only when nothing inside the
  message was wrong, so one mistake is reported once and never cascades.

Errors never raise: they go to the ``ParseContext`` with their YAML path
(``static_resources.listeners[0].filter_chains[0].filters[0].typed_config.cluster``) and the
file that path came from, so a whole config is checked in one pass. Paths are absolute;
``ctx.at(path)`` gives a view of the same context positioned at ``path``, which is how a
filter's ``parse(typed_config, ctx)`` learns where its config lives.

Cluster references (``tcp_proxy.cluster``) are checked after every cluster is known:
``ctx.require_cluster(path, name)`` records them and ``ctx.check_cluster_refs()`` reports
the unknown ones.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)

TYPE_URL_PREFIX = "type.googleapis.com/"
UINT32_MAX = 2**32 - 1
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def join(path: str, key: object) -> str:
    """The path of ``key`` inside ``path``: ``a.b``, ``a[3]``, or ``a["envoy.x"]`` for odd keys."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    text = str(key)
    if _IDENTIFIER.fullmatch(text):
        return f"{path}.{text}" if path else text
    return f'{path}["{text}"]'


def describe(value: object) -> str:
    """A YAML-flavoured description of a value for error messages: ``integer 80``, ``mapping``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value[:60]!r}"
    if isinstance(value, int | float):
        return f"{'integer' if isinstance(value, int) else 'number'} {value}"
    if isinstance(value, dict | list):
        return "mapping" if isinstance(value, dict) else "list"
    return type(value).__name__


def _suggest(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --- the context ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Shared:
    errors: list[str]
    sources: dict[str, str]
    default_source: str
    cluster_names: set[str] = field(default_factory=set)
    cluster_names_complete: bool = True
    cluster_refs: list[tuple[str, str]] = field(default_factory=list)


class ParseContext:
    """Collects the errors of one config compilation; all views from ``at()`` share them.

    ``sources`` maps a YAML path (a top-level key, or a list element such as
    ``static_resources.clusters[3]``) to the file it came from; an error is attributed
    to the file of its longest recorded prefix, else to ``default_source``.
    """

    __slots__ = ("_shared", "path")

    def __init__(self, sources: Mapping[str, str] | None = None, default_source: str = "") -> None:
        self._shared = _Shared(errors=[], sources=dict(sources or {}), default_source=default_source)
        self.path = ""

    def at(self, path: str) -> ParseContext:
        """A view of this context positioned at ``path`` (errors and clusters are shared)."""
        view = ParseContext.__new__(ParseContext)
        view._shared = self._shared
        view.path = path
        return view

    @property
    def errors(self) -> list[str]:
        return self._shared.errors

    @property
    def cluster_names(self) -> frozenset[str]:
        return frozenset(self._shared.cluster_names)

    def source_of(self, path: str) -> str:
        """The file the YAML at ``path`` was read from."""
        best, best_len = self._shared.default_source, -1
        for prefix, source in self._shared.sources.items():
            n = len(prefix)
            if n > best_len and path.startswith(prefix) and (len(path) == n or path[n] in ".["):
                best, best_len = source, n
        return best

    def where(self, path: str) -> str:
        """``file: path``, as errors print a location."""
        return ": ".join(part for part in (self.source_of(path), path) if part)

    def error(self, path: str, message: str) -> None:
        """Report that the YAML at ``path`` is wrong; ``message`` says what was expected."""
        where = self.where(path)
        self._shared.errors.append(f"{where}: {message}" if where else message)

    def error_count(self) -> int:
        return len(self._shared.errors)

    def check_fields(self, value: object, allowed: Iterable[str], path: str | None = None) -> bool:
        """For messages with no schema worth declaring: ``value`` is a mapping of ``allowed`` keys."""
        path = self.path if path is None else path
        if not isinstance(value, dict):
            self.error(path, f"expected mapping, got {describe(value)}")
            return False
        names = list(allowed)
        unknown = [key for key in value if key not in names]
        for key in unknown:
            self.error(join(path, key), f"unknown field '{key}'{_suggest(str(key), names)}")
        return not unknown

    def declare_cluster(self, name: str) -> None:
        self._shared.cluster_names.add(name)

    def clusters_unreadable(self) -> None:
        """Some cluster names could not be read (already an error): skip the reference check."""
        self._shared.cluster_names_complete = False

    def require_cluster(self, path: str, name: str) -> None:
        """Check, once all clusters are known, that cluster ``name`` (found at ``path``) exists."""
        self._shared.cluster_refs.append((path, name))

    def check_cluster_refs(self) -> None:
        """Report every ``require_cluster`` whose cluster was never declared."""
        known = self._shared.cluster_names
        refs = self._shared.cluster_refs if self._shared.cluster_names_complete else []
        for path, name in refs:
            if name not in known:
                hint = _suggest(name, known) or (" (no clusters are defined)" if not known else "")
                self.error(path, f"unknown cluster '{name}'{hint}")
        self._shared.cluster_refs.clear()


# --- fields and messages ---------------------------------------------------------------------

ParseFn = Callable[[Any, ParseContext, str], Any]


@dataclass(frozen=True, slots=True)
class Field:
    """One supported field: ``parse(value, ctx, path)`` reports its own errors and returns a value."""

    parse: ParseFn
    default: Any = None
    required: bool = False


@dataclass(frozen=True, slots=True)
class Oneof:
    """At most one of ``names`` may be set (exactly one when ``required``).

    Names may include unsupported fields, so that setting one of those is reported as
    unsupported rather than also as a missing oneof.
    """

    names: tuple[str, ...]
    required: bool = False


@dataclass(frozen=True, slots=True)
class Message(Generic[T]):
    """A proto message: its supported fields and what to do with everything else.

    ``build(fields, ctx, path)`` turns the parsed fields (every supported field present,
    defaults filled in) into the compiled object; it may report semantic errors and
    return None.
    """

    name: str
    fields: Mapping[str, Field]
    build: Callable[[dict[str, Any], ParseContext, str], T | None]
    unsupported: frozenset[str] = frozenset()
    removed: Mapping[str, str] = field(default_factory=dict)
    oneofs: tuple[Oneof, ...] = ()

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    def parse(self, value: object, ctx: ParseContext, path: str | None = None) -> T | None:
        """Check ``value`` against this message; None when anything in it was wrong."""
        path = ctx.path if path is None else path
        if not isinstance(value, dict):
            ctx.error(path, f"expected mapping ({self.short_name}), got {describe(value)}")
            return None
        before = ctx.error_count()
        parsed: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                ctx.error(path, f"field names must be strings, got {describe(key)}")
                continue
            spec = self.fields.get(key)
            if spec is None:
                self._reject(key, ctx, join(path, key))
            elif item is not None:
                parsed[key] = spec.parse(item, ctx, join(path, key))
        for name, spec in self.fields.items():
            if name not in parsed:
                if spec.required:
                    ctx.error(path, f"missing required field '{name}' in {self.short_name}")
                parsed[name] = spec.default
        for group in self.oneofs:
            present = [name for name in group.names if value.get(name) is not None]
            names = ", ".join(f"'{name}'" for name in group.names)
            if len(present) > 1:
                ctx.error(path, f"only one of {names} may be set, got {', '.join(present)}")
            elif not present and group.required:
                ctx.error(path, f"one of {names} is required in {self.short_name}")
        if ctx.error_count() > before:
            return None
        return self.build(parsed, ctx, path)

    def _reject(self, key: str, ctx: ParseContext, path: str) -> None:
        if key in self.removed:
            ctx.error(path, f"field '{key}' was removed in v3: {self.removed[key]}")
        elif key in self.unsupported:
            ctx.error(path, f"field '{key}' is a valid Envoy field but not supported by meshproxy")
        else:
            hint = _suggest(key, [*self.fields, *self.unsupported])
            ctx.error(path, f"unknown field '{key}' in {self.short_name}{hint}")


def as_dict(fields: dict[str, Any], ctx: ParseContext, path: str) -> dict[str, Any]:
    """A ``build`` hook for messages whose parent reads the parsed fields directly."""
    return fields


def unsupported(*names: str) -> frozenset[str]:
    return frozenset(names)


# --- field types -----------------------------------------------------------------------------


def _expected(ctx: ParseContext, path: str, what: str, value: object) -> None:
    scalar = not isinstance(value, dict | list)
    hint = " (quote it if it is meant as text)" if what == "string" and scalar else ""
    ctx.error(path, f"expected {what}, got {describe(value)}{hint}")


def string(default: str | None = "", *, required: bool = False, min_len: int = 0) -> Field:
    def parse(value: object, ctx: ParseContext, path: str) -> str | None:
        if not isinstance(value, str):
            _expected(ctx, path, "string", value)
            return None
        if len(value) < min_len:
            ctx.error(path, "must not be empty")
        return value

    return Field(parse, default, required)


def cluster_ref(*, required: bool = False) -> Field:
    """A string naming a cluster; checked once all clusters are known."""
    inner = string(None, min_len=1).parse

    def parse(value: object, ctx: ParseContext, path: str) -> str | None:
        name = inner(value, ctx, path)
        if name:
            ctx.require_cluster(path, name)
        return name

    return Field(parse, None, required)


def integer(
    default: int | None = 0, *, minimum: int = 0, maximum: int = UINT32_MAX, required: bool = False
) -> Field:
    """An integer in ``[minimum, maximum]`` (uint32 by default); booleans and strings are refused."""

    def parse(value: object, ctx: ParseContext, path: str) -> int | None:
        if not isinstance(value, int) or isinstance(value, bool):
            _expected(ctx, path, "integer", value)
            return None
        if not minimum <= value <= maximum:
            ctx.error(path, f"expected integer in [{minimum}, {maximum}], got {value}")
            return None
        return value

    return Field(parse, default, required)


def boolean(default: bool = False) -> Field:
    def parse(value: object, ctx: ParseContext, path: str) -> bool | None:
        if not isinstance(value, bool):
            _expected(ctx, path, "boolean", value)
            return None
        return value

    return Field(parse, default)


def anything() -> Field:
    """Accepted as is (e.g. ``metadata``, a Struct meshproxy keeps only in the raw config)."""
    return Field(lambda value, ctx, path: value)


def enum_field(cls: type[E], default: E | None, *, envoy_only: Iterable[str] = ()) -> Field:
    """An enum by name, case-insensitive; ``envoy_only`` names are valid in Envoy but not here."""
    not_here = frozenset(envoy_only)
    names = [m.name for m in cls]

    def parse(value: object, ctx: ParseContext, path: str) -> E | None:
        if not isinstance(value, str):
            _expected(ctx, path, f"one of {', '.join(names)}", value)
            return None
        upper = value.upper()
        if upper in cls.__members__:
            return cls[upper]
        if upper in not_here:
            ctx.error(path, f"{upper} is a valid Envoy value but not supported by meshproxy "
                      f"(supported: {', '.join(names)})")
        else:
            ctx.error(path, f"expected one of {', '.join(names)}, got {value!r}{_suggest(upper, names)}")
        return None

    return Field(parse, default)


_DURATION = re.compile(r"(-?)(\d+)(?:\.(\d{1,9}))?s")
_OTHER_UNIT = re.compile(r"-?\d+(\.\d+)?\s*(ns|us|ms|m|min|h|d)")


def parse_duration(value: object) -> float:
    """A proto JSON duration (``"5s"``, ``"0.25s"`` or ``{seconds, nanos}``) in float seconds.

    Raises ValueError with the reason; negative durations are refused.
    """
    if isinstance(value, str):
        text = value.strip()
        m = _DURATION.fullmatch(text)
        if m is None:
            if _OTHER_UNIT.fullmatch(text):
                raise ValueError(f"durations are seconds with an 's' suffix, e.g. '0.25s'; got {value!r}")
            raise ValueError(f"expected a duration such as '5s' or '0.25s', got {value!r}")
        if m.group(1):
            raise ValueError(f"expected a non-negative duration, got {value!r}")
        return int(m.group(2)) + int((m.group(3) or "0").ljust(9, "0")) / 1e9
    if isinstance(value, dict):
        if set(value) - {"seconds", "nanos"}:
            keys = ", ".join(sorted(map(str, value)))
            raise ValueError(f"a duration mapping has only 'seconds' and 'nanos', got {keys}")
        seconds, nanos = value.get("seconds", 0), value.get("nanos", 0)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (seconds, nanos)):
            raise ValueError("expected integer 'seconds' and 'nanos'")
        if seconds < 0 or not 0 <= nanos <= 999_999_999:
            raise ValueError("expected seconds >= 0 and nanos in [0, 999999999]")
        return seconds + nanos / 1e9
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"expected a duration string such as '5s', got {describe(value)} (write '{value}s')")
    raise ValueError(f"expected a duration such as '5s' or '0.25s', got {describe(value)}")


def duration(
    default: float | None, *, gt: float | None = None, ge: float | None = None, lt: float | None = None
) -> Field:
    """A duration in float seconds, with Envoy's bounds (``gt``/``ge``/``lt``) when it has them."""

    def parse(value: object, ctx: ParseContext, path: str) -> float | None:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            ctx.error(path, str(exc))
            return None
        too_small = (gt is not None and seconds <= gt) or (ge is not None and seconds < ge)
        if too_small or (lt is not None and seconds >= lt):
            bounds = [f"{op} {b:g}s" for op, b in ((">", gt), (">=", ge), ("<", lt)) if b is not None]
            ctx.error(path, f"expected a duration {' and '.join(bounds)}, got {value!r}")
            return None
        return seconds

    return Field(parse, default)


def message(spec: Message[Any], *, required: bool = False, default: object = None) -> Field:
    return Field(lambda value, ctx, path: spec.parse(value, ctx, path), default, required)


def parse_list(value: object, ctx: ParseContext, path: str, item: Message[Any] | Field) -> list[Any] | None:
    """Parse every element; the result keeps positions (None where an element was wrong)."""
    if not isinstance(value, list):
        _expected(ctx, path, "list", value)
        return None
    return [item.parse(element, ctx, join(path, i)) for i, element in enumerate(value)]


def repeated(item: Message[Any] | Field, *, min_items: int = 0) -> Field:
    """A list field compiled into a tuple of the valid elements."""

    def parse(value: object, ctx: ParseContext, path: str) -> tuple[Any, ...]:
        parsed = parse_list(value, ctx, path, item)
        if parsed is not None and len(parsed) < min_items:
            ctx.error(path, f"expected at least {min_items} item(s)")
        return tuple(x for x in parsed or () if x is not None)

    return Field(parse, ())


# --- typed_config ----------------------------------------------------------------------------

_V2_FILTER = re.compile(r"envoy\.config\.filter\.(network|http|listener|udp)\.(\w+)\.v2\w*\.(\w+)")


def parse_typed_config(value: object, ctx: ParseContext, path: str) -> tuple[str, dict[str, Any]] | None:
    """A ``typed_config`` (an ``Any``): returns its ``@type`` URL and the other fields.

    Envoy picks the extension by the message in the URL and ignores the host part.
    v2 messages are refused, with the v3 name when it can be guessed.
    """
    if not isinstance(value, dict):
        _expected(ctx, path, "mapping with '@type'", value)
        return None
    type_url = value.get("@type")
    tpath = join(path, "@type")
    if type_url is None:
        ctx.error(path, "missing '@type' (the config's type URL, e.g. "
                  "'type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy')")
        return None
    if not isinstance(type_url, str) or "/" not in type_url:
        ctx.error(tpath, f"expected a type URL 'type.googleapis.com/<message>', got {describe(type_url)}")
        return None
    msg = message_of(type_url)
    if ".v2." in f".{msg}." or re.search(r"\.v2alpha\d*\.|^envoy\.api\.v2\.", msg):
        v2 = _V2_FILTER.fullmatch(msg)
        hint = f": use '{TYPE_URL_PREFIX}envoy.extensions.filters.{v2[1]}.{v2[2]}.v3.{v2[3]}'" if v2 else ""
        ctx.error(tpath, f"v2 API type '{type_url}' is not supported (Envoy removed the v2 API){hint}")
        return None
    return type_url, {k: v for k, v in value.items() if k != "@type"}


def message_of(type_url: str) -> str:
    """``type.googleapis.com/a.b.C`` -> ``a.b.C``."""
    return type_url.rsplit("/", 1)[-1]


# --- cluster protocol options (typed_extension_protocol_options) ------------------------------


@dataclass(frozen=True, slots=True)
class ProtocolOptionsType:
    """A filter's per-cluster options: ``typed_extension_protocol_options[name]``."""

    name: str  # the key, e.g. "envoy.filters.network.redis_proxy"
    message: str  # e.g. "envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions"
    parse: Callable[[dict[str, Any], ParseContext], object]


_protocol_options: dict[str, ProtocolOptionsType] = {}


def register_protocol_options(options: ProtocolOptionsType) -> ProtocolOptionsType:
    """Let clusters carry ``options.name`` in ``typed_extension_protocol_options``."""
    _protocol_options[options.name] = options
    return options


def lookup_protocol_options(name: str) -> ProtocolOptionsType | None:
    return _protocol_options.get(name)
