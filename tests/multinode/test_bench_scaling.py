"""`nekrs-ml bench scaling` run tiny on the emulated cluster (1 and 2 nodes, 1 rank each, a few
calls): its records have the documented shape, each rank ran on its own node, and nothing of the
run is left behind (no namespace, server or rank process)."""

import importlib.util
import json
import subprocess
import sys

import pytest

from support.emulated_cluster import why_unavailable

UNAVAILABLE = why_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")

OPS = {"snapshot_put", "snapshot_get", "bare_put", "bare_get"}


def namespaces():
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return set(listed.stdout.split())


def redis_servers():
    found = subprocess.run(["pgrep", "-f", "nkml-scaling-"], capture_output=True, text=True)
    return found.stdout.split()


def test_scaling_records_on_one_and_two_nodes(tmp_path):
    before = namespaces()
    output = tmp_path / "scaling.json"
    figure = tmp_path / "scaling.png"
    can_plot = importlib.util.find_spec("matplotlib") is not None
    proc = subprocess.run(
        [sys.executable, "-m", "nekrs_ml.cli", "bench", "scaling", "--nodes", "1,2",
         "--ranks-per-node", "1", "--calls", "8", "--points", "1000", "--features", "2",
         "--timeout", "50", "--json", "--output", str(output)]
        + (["--plot", str(figure)] if can_plot else []),
        capture_output=True, text=True, timeout=90, cwd="/tmp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(proc.stdout)
    assert json.loads(output.read_text()) == records
    cases = {(r["layout"], r["nodes"], r["op"]) for r in records}
    assert cases == {(layout, nodes, op) for layout in ("colocated", "cluster")
                     for nodes in (1, 2) for op in OPS}
    assert len(records) == len(cases)
    for r in records:
        assert r["ranks"] == r["nodes"] and r["ranks_per_node"] == 1
        assert (r["points"], r["features"], r["dtype"]) == (1000, 2, "float32")
        assert r["bytes"] == 2 * 1000 * 2 * 4 and r["calls"] == 8
        assert 0 < r["p50_us"] <= r["p99_us"]
        assert len(r["rank_p50_us"]) == len(r["rank_p99_us"]) == r["ranks"]
        assert r["machine"]["cores"] >= 1 and len(r["machine"]["load_average"]) == 3
        if r["op"].startswith("snapshot"):
            assert r["vs_bare_p50"] > 0 and "seed_polaris_us" in r
        if r["layout"] == "cluster":
            assert r["db_nodes"] == 1 and r["shards_per_db_node"] == 3
    if can_plot:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert namespaces() == before
    assert redis_servers() == []


def test_a_bad_option_is_named(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "bench", "scaling", "--nodes",
                           "two", "--json"], capture_output=True, text=True, timeout=60, cwd="/tmp")
    assert proc.returncode != 0
    assert "--nodes 'two'" in proc.stderr
