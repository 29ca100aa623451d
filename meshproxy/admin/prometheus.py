"""``/stats/prometheus``: the Prometheus text exposition format 0.0.4 (envoy-subset.md §8.1).

Each stat name goes through tag extraction (``tags.py``); the metric name is
``envoy_`` + the tag-extracted name with every character outside ``[a-zA-Z0-9_]``
replaced by ``_``, and the tags become labels (names sanitized the same way, values
escaped as the format requires). As in Envoy's ``prometheus_stats.cc``:

* counters first, then gauges, then histograms;
* within a kind, one family per metric name, families sorted by name, each introduced by
  one ``# TYPE`` line and followed by a blank line; samples sorted by full stat name;
* a stat without tags prints ``envoy_server_uptime{} 5``;
* a histogram prints ``_bucket`` lines for Envoy's default bounds (``le`` formatted
  with ``%.32g``, so ``0.5``, ``1``, ``3600000``), ``le="+Inf"``, then ``_sum`` and
  ``_count``, all cumulative. The bucket counts come from
  ``HistogramData.cumulative_buckets``: exact at bucket edges, else split linearly
  inside one fine bucket.

Unlike Envoy, families are keyed by the *sanitized* name, so two tag-extracted names
that sanitize alike (``a.b`` and ``a_b``) share one ``# TYPE`` line, and a family name
already used by an earlier kind is skipped rather than declared twice: the output always
parses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

from meshproxy.admin.stats_view import StatsSelection
from meshproxy.admin.tags import TagProducer, Tags, default_producer
from stats_shm import PROMETHEUS_DEFAULT_BOUNDS, HistogramData

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_INVALID: Final = re.compile(r"[^a-zA-Z0-9_]")
_LE: Final = tuple(f"{b:.32g}" for b in PROMETHEUS_DEFAULT_BOUNDS)


def sanitize_name(name: str) -> str:
    """``[^a-zA-Z0-9_]`` → ``_``, and a ``_`` before a leading digit."""
    name = _INVALID.sub("_", name)
    return "_" + name if name[:1].isdigit() else name


def metric_name(extracted: str) -> str:
    return "envoy_" + sanitize_name(extracted)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_labels(tags: Tags) -> str:
    """``envoy_cluster_name="svc",...`` (no braces), in tag order."""
    return ",".join(f'{sanitize_name(k)}="{_escape(v)}"' for k, v in tags)


def _number(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


Families = dict[str, list[tuple[str, Tags]]]


def _families(names: Iterable[str], producer: TagProducer, taken: set[str]) -> Families:
    families: Families = {}
    for name in names:
        extracted, tags = producer.produce(name)
        metric = metric_name(extracted)
        if metric in taken:
            continue
        families.setdefault(metric, []).append((name, tags))
    taken.update(families)
    return families


def _histogram_lines(metric: str, tags: Tags, data: HistogramData, out: list[str]) -> None:
    labels = format_labels(tags)
    prefix = labels + "," if labels else ""
    counts: Sequence[int] = data.cumulative_buckets(PROMETHEUS_DEFAULT_BOUNDS)
    for le, count in zip(_LE, counts, strict=True):
        out.append(f'{metric}_bucket{{{prefix}le="{le}"}} {count}\n')
    out.append(f'{metric}_bucket{{{prefix}le="+Inf"}} {data.count}\n')
    out.append(f"{metric}_sum{{{labels}}} {_number(data.sum)}\n")
    out.append(f"{metric}_count{{{labels}}} {data.count}\n")


def render_prometheus(selection: StatsSelection, producer: TagProducer | None = None) -> str:
    """The whole exposition (see the module docstring)."""
    producer = producer or default_producer()
    out: list[str] = []
    taken: set[str] = set()
    for kind, values in (("counter", dict(selection.counters)), ("gauge", dict(selection.gauges))):
        families = _families(values, producer, taken)
        for metric in sorted(families):
            out.append(f"# TYPE {metric} {kind}\n")
            for name, tags in sorted(families[metric]):
                out.append(f"{metric}{{{format_labels(tags)}}} {values[name]}\n")
            out.append("\n")
    histograms = {view.name: view.cumulative for view in selection.histograms}
    families = _families(histograms, producer, taken)
    for metric in sorted(families):
        out.append(f"# TYPE {metric} histogram\n")
        for name, tags in sorted(families[metric]):
            _histogram_lines(metric, tags, histograms[name], out)
        out.append("\n")
    return "".join(out)
