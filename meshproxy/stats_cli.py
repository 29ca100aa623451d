"""``meshproxy stats``: read a running instance's stats straight from shared memory.

It attaches to the stats segment of ``--base-id`` read-only (it needs only read
permission on ``/dev/shm/meshproxy_stats_<id>``, no admin listener) and prints what
``/stats`` would, with the same renderers: text, JSON or Prometheus, with the same
``--filter`` (regex searched in the name), ``--usedonly`` and ``--type``.

Histogram intervals: the CLI has no stats flush of its own, so a single run prints
``nan`` for every interval; with ``--watch`` the interval is what was recorded since the
previous refresh. ``/reset_counters`` belongs to one admin server and does not apply.

``--watch SECONDS`` redraws in place (ANSI home + clear screen) until Ctrl-C.
"""

from __future__ import annotations

import re
import sys
import time

import click

from meshproxy.admin.prometheus import render_prometheus
from meshproxy.admin.render_json import render_json
from meshproxy.admin.render_text import render_text
from meshproxy.admin.stats_view import StatsFormat, StatsParams, StatsType, select
from stats_shm import DEFAULT_DIRECTORY, HistogramData, Segment, Snapshot, StatsLayoutError, StatsSegmentError

CLEAR = "\x1b[H\x1b[2J"


def render(snapshot: Snapshot, params: StatsParams, previous: Snapshot | None) -> str:
    """The output for one snapshot; intervals are relative to ``previous`` (None: no interval)."""
    intervals: dict[str, HistogramData] | None = None
    if previous is not None:
        intervals = {n: h.interval(previous.histograms.get(n)) for n, h in snapshot.histograms.items()}
    selection = select(snapshot, params, intervals=intervals)
    if params.format is StatsFormat.JSON:
        return render_json(selection, pretty=True)
    if params.format is StatsFormat.PROMETHEUS:
        return render_prometheus(selection)
    return render_text(selection)


def _attach(base_id: int, directory: str) -> Segment:
    try:
        return Segment.attach(base_id, directory=directory, read_only=True)
    except FileNotFoundError:
        raise click.ClickException(f"no meshproxy running with --base-id {base_id} "
                                   f"(no stats segment in {directory})") from None
    except PermissionError as exc:
        raise click.ClickException(f"cannot read the stats of --base-id {base_id}: {exc}") from None
    except StatsLayoutError as exc:
        raise click.ClickException(f"incompatible stats segment for --base-id {base_id}: {exc}") from None


def _snapshot(segment: Segment) -> Snapshot:
    try:
        return segment.snapshot()
    except (StatsSegmentError, TimeoutError) as exc:
        raise click.ClickException(f"cannot read the stats segment: {exc}") from None


@click.command("stats")
@click.option("--base-id", type=int, default=None,
              help="The instance to read (default: the global --base-id, else 0).")
@click.option("--filter", "filter_", default=None, metavar="REGEX", help="Only stats whose name matches.")
@click.option("--format", "fmt", type=click.Choice([f.value for f in StatsFormat]), default="text",
              show_default=True)
@click.option("--type", "type_", type=click.Choice([t.value for t in StatsType]), default="All",
              show_default=True)
@click.option("--usedonly", is_flag=True, help="Only stats that have been written at least once.")
@click.option("--watch", type=click.FloatRange(min=0.1), default=None, metavar="SECONDS",
              help="Refresh every SECONDS until Ctrl-C.")
@click.option("--shm-dir", default=DEFAULT_DIRECTORY, hidden=True)
@click.pass_context
def stats(ctx: click.Context, base_id: int | None, filter_: str | None, fmt: str, type_: str, usedonly: bool,
          watch: float | None, shm_dir: str) -> None:
    """Print the stats of a running meshproxy (like the admin /stats), read from shared memory."""
    if base_id is None:
        parent = ctx.parent.params if ctx.parent is not None else {}
        base_id = int(parent.get("base_id") or 0)
    try:
        pattern = re.compile(filter_) if filter_ else None
    except re.error as exc:
        raise click.BadParameter(f"invalid regex: {exc}", param_hint="--filter") from None
    params = StatsParams(usedonly, pattern, StatsType(type_), StatsFormat(fmt))
    segment = _attach(base_id, shm_dir)
    try:
        if watch is None:
            _write(render(_snapshot(segment), params, None))
            return
        previous: Snapshot | None = None
        while True:
            snapshot = _snapshot(segment)
            now = time.strftime("%H:%M:%S")
            header = f"meshproxy stats --base-id {base_id}, every {watch:g}s ({now}); Ctrl-C to stop\n\n"
            _write(CLEAR + header + render(snapshot, params, previous))
            previous = snapshot
            time.sleep(watch)
    except KeyboardInterrupt:
        _write("\n")
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
    finally:
        segment.close()


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
