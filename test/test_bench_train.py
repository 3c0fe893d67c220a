"""benchmarks/bench_train.py: every variant runs on the recipe's data and reports its three rates."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.mark.skipif(not (SHARED / "traffic-cctv").is_dir(), reason="../shared/data not available")
def test_bench_train_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the recipe's dataset paths are relative to the repository root
    bench = importlib.import_module("bench_train")
    path = tmp_path / "train.json"
    rc = bench.main(["--variants", "before", "after", "after, workers 0", "--steps", "1", "--warmup", "0",
                     "--rounds", "2", "--limit-images", "4", "--batch-size", "2", "--threads", "1",
                     "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| variant | bf16 | channels_last | cache | workers | loading img/s | step img/s | whole loop img/s |" in out
    data = json.loads(path.read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert list(rows) == ["before", "after", "after, workers 0"]
    assert rows["before"]["loop_vs_first"] == 1.0 and rows["after"]["cache"] is True
    for r in rows.values():
        assert r["load_img_s"] > 0 and r["step_img_s"] > 0 and r["loop_img_s"] > 0
        assert len(r["rounds"]["loop"]) == 2
    assert data["config"]["input_size"] == [256, 256] and data["env"]["load_average_start"] is not None
