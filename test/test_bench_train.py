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


@pytest.mark.skipif(not (SHARED / "traffic-cctv").is_dir(), reason="../shared/data not available")
def test_gpu_train_script_smoke():
    """benchmarks/gpu_train.sh --smoke: packs a few images and trains 2 iterations on the CPU."""
    import subprocess

    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_train.sh"), "--smoke"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                             "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "gpu_train.sh --smoke: ok" in proc.stdout and "iterations: 2" in proc.stdout


@pytest.mark.skipif(not (SHARED / "traffic-cctv").is_dir(), reason="../shared/data not available")
def test_pack_data_keeps_labels_and_fits_the_budget(tmp_path, monkeypatch):
    import numpy as np
    import yaml

    from centernet_ros.mixing import DatasetSpec, load_spec_dataset
    from centernet_ros.pack_data import main as pack_main

    monkeypatch.chdir(REPO)
    out = tmp_path / "pack"
    assert pack_main(["--config", "config/train_vehicles_cpu.yaml", "--out", str(out), "--limit-images", "4",
                      "--max-side", "320", "--thin", "traffic-cctv", "--every", "2"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert [e["path"] for e in cfg["data"]["train"]] == [str(out / "openimages"), str(out / "traffic-cctv")]
    assert isinstance(cfg["data"]["train"][1]["class_map"], dict) and cfg["data"]["val"] == []
    src = load_spec_dataset(DatasetSpec(path=str(SHARED / "traffic-cctv"), split="train", limit_images=4))
    packed = load_spec_dataset(DatasetSpec(path=str(out / "traffic-cctv"), split="train"))
    assert len(packed) == 2  # every 2nd of 4
    a, b = src[2], packed[1]
    assert max(b.image.shape[:2]) == 320 and a.labels.tolist() == b.labels.tolist()
    scale = b.image.shape[1] / a.image.shape[1]
    np.testing.assert_allclose(b.boxes, a.boxes * scale, atol=0.6)
    assert pack_main(["--config", "config/train_vehicles_cpu.yaml", "--out", str(out), "--limit-images", "4",
                      "--budget-mib", "0.01"]) == 2


@pytest.mark.skipif(not (SHARED / "traffic-cctv").is_dir(), reason="../shared/data not available")
def test_tune_threshold_smoke(tmp_path, capsys, monkeypatch):
    import numpy as np
    import torch

    from centernet_ros.model import centernet_resnet18
    from centernet_ros.weights import save_model

    monkeypatch.chdir(REPO)
    torch.manual_seed(0)
    w = tmp_path / "m.safetensors"
    save_model(w, centernet_resnet18(num_classes=5, head_width=16, pool_width=8),
               class_names=["Ambulance", "Bus", "Car", "Motorcycle", "Truck"], input_size=(128, 224))
    tune = importlib.import_module("tune_threshold")
    path = tmp_path / "t.json"
    assert tune.main(["--weights", str(w), "--limit-images", "3", "--backend", "torch", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert [r["dataset"] for r in data["rows"]] == ["openimages", "traffic-cctv"]
    assert 0.05 <= data["threshold"] <= 0.95 and data["config"]["input_size"] == [128, 224]
    curves = data["curves"]["traffic-cctv"]
    assert len(curves["f1"]) == len(data["curves"]["thresholds"]) and curves["num_gt"] > 0
    assert all(0 <= p <= 1 for p in curves["precision"]) and np.all(np.diff(curves["recall"]) <= 1e-12)
    assert "score_threshold for" in capsys.readouterr().out


def test_threshold_matching_rules():
    import numpy as np

    tune = importlib.import_module("tune_threshold")
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    dets = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    labels = np.array([0, 0, 1, 0])
    tp, counted, sc = tune.match(dets, scores, labels, gt, np.array([0, 1]), np.array([[45, 45, 70, 70]], np.float32))
    # best first: a true positive, a duplicate (false positive), a true positive (its class), one in an ignore region
    assert tp.tolist() == [True, False, True, False] and counted.tolist() == [True, True, True, False]
    assert sc.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])
