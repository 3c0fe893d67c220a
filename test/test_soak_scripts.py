"""benchmarks/bench_transport.py and benchmarks/soak.py run end to end with the tiniest settings (separate
publisher, subscriber and node processes): their tables come out and a soak row closes.  No timing or
delivery-rate assertions (those are the scripts' output, docs/benchmarks.md section 4)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="ROS 2 test: rclpy is not importable; `make test` installs it")

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["node_testing"]  # tiny_weights: the session's small model (the soak's node loads it fast)


def run(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_bench_transport_prints_a_row_per_setting(tmp_path):
    out = tmp_path / "transport.json"
    res = run("bench_transport.py", "--cameras", "1", "--sizes", "64x48", "--profiles", "default", "both",
              "--rate", "10", "--duration", "1", "--json", str(out))
    lines = [line for line in res.stdout.splitlines() if line.startswith("| default") or line.startswith("| both")]
    assert len(lines) == 2, res.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["profile"] for r in rows] == ["default", "both"]
    assert all(r["published"] == [10] and 0 <= r["received"][0] <= 10 for r in rows)


def test_soak_rows_close(tmp_path, tiny_weights):
    out = tmp_path / "soak.json"
    res = run("soak.py", "--cameras", "2", "--size", "160x90", "--rate", "5", "--duration", "4", "--warmup", "1",
              "--node-arg", f"weights:={tiny_weights}", "--node-arg", "backend:=torch", "--json", str(out), timeout=600)
    data = json.loads(out.read_text())
    assert [r["camera"] for r in data["rows"]] == ["/soak/cam0/image_raw", "/soak/cam1/image_raw"]
    for r in data["rows"]:
        assert r["published"] == 20
        assert r["received"] == r["processed"] + r["dropped"] + r["rejected"]  # the node was idle when read
        assert r["processed"] >= 1
    assert set(data["rss_kib"]) == {"first", "start", "middle", "end"}
    assert "| /soak/cam1/image_raw | 20 |" in res.stdout and "RSS growth" in res.stdout
