"""``meshproxy stats``: reads a real stats segment read-only and prints /stats's formats."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from meshproxy.stats_cli import CLEAR, stats
from stats_shm import Segment


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[Segment]:
    seg = Segment.create(7, slot_budget=64, histogram_budget=8, areas=4, directory=str(tmp_path))
    store = seg.store(seg.claim_area())
    store.counter("cluster.svc.upstream_rq_200").inc(7)
    store.counter("cluster.svc.upstream_cx_total").inc(3)
    store.counter("cluster.svc.never_used")
    store.gauge("server.uptime").set(5)
    store.histogram("cluster.svc.upstream_rq_time").record(8)
    yield seg
    seg.close()


def cli() -> click.Group:
    @click.group()
    @click.option("--base-id", type=int, default=0)
    def main(base_id: int) -> None:
        pass

    main.add_command(stats)
    return main


def invoke(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli(), [*args[:args.index("stats") + 1], "--shm-dir", str(tmp_path),
                                        *args[args.index("stats") + 1:]])
    return result.exit_code, result.output


def test_text(tmp_path: Path, segment: Segment) -> None:
    code, out = invoke(tmp_path, "stats", "--base-id", "7")
    assert code == 0, out
    lines = out.splitlines()
    assert "cluster.svc.upstream_rq_200: 7" in lines and "server.uptime: 5" in lines
    assert any(line.startswith("cluster.svc.upstream_rq_time: P0(nan,") for line in lines)


def test_base_id_from_the_global_option(tmp_path: Path, segment: Segment) -> None:
    code, out = invoke(tmp_path, "--base-id", "7", "stats")
    assert code == 0 and "server.uptime: 5" in out


def test_filter_usedonly_json_prometheus(tmp_path: Path, segment: Segment) -> None:
    code, out = invoke(tmp_path, "stats", "--base-id", "7", "--filter", r"upstream_rq_\d+$")
    assert (code, out) == (0, "cluster.svc.upstream_rq_200: 7\n")
    code, out = invoke(tmp_path, "stats", "--base-id", "7", "--usedonly", "--filter", "svc")
    assert "never_used" not in out and "upstream_cx_total: 3" in out
    code, out = invoke(tmp_path, "stats", "--base-id", "7", "--format", "json")
    doc = json.loads(out)
    assert {"name": "server.uptime", "value": 5} in doc["stats"]
    code, out = invoke(tmp_path, "stats", "--base-id", "7", "--format", "prometheus")
    families = {f.name for f in text_string_to_metric_families(out)}
    assert "envoy_cluster_upstream_rq" in families and "envoy_server_uptime" in families


def test_missing_segment(tmp_path: Path) -> None:
    code, out = invoke(tmp_path, "stats", "--base-id", "3")
    assert code == 1 and "no meshproxy running with --base-id 3" in out


def test_bad_regex(tmp_path: Path, segment: Segment) -> None:
    code, out = invoke(tmp_path, "stats", "--base-id", "7", "--filter", "(")
    assert code == 2 and "invalid regex" in out


def test_watch_redraws_until_ctrl_c(tmp_path: Path, segment: Segment,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("meshproxy.stats_cli.time.sleep", fake_sleep)
    code, out = invoke(tmp_path, "stats", "--base-id", "7", "--watch", "0.5", "--type", "Histograms")
    assert code == 0 and sleeps == [0.5, 0.5]
    frames = out.split(CLEAR)[1:]
    assert len(frames) == 2
    assert "P0(nan," in frames[0]
    assert "P100(nan,8)" in frames[1]  # second frame: interval since the first, no new samples
