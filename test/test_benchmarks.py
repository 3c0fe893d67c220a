"""Smoke and behaviour tests of the benchmark scripts (no timing assertions).

Legend: B batch, C classes, H/W map size, K top-k.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

common = importlib.import_module("common")
baseline_ctdet = importlib.import_module("baseline_ctdet")

from devices import DEVICES  # noqa: E402


# ------------------------------------------------------------------------------------------ common


def test_format_table_layout_and_missing_values():
    rows = [{"a": 1, "b": 2.5}, {"a": "x"}]
    out = common.format_table(rows, [("a", "A"), ("b", "B col")]).splitlines()
    assert out[0] == "| A | B col |"
    assert out[1] == "| --- | --- |"
    assert out[2] == "| 1 | 2.50 |"
    assert out[3] == "| x | - |"
    assert common.format_table([], [("a", "A")]).count("\n") == 1  # header + separator only


def test_time_callable_counts_calls():
    calls = []
    t = common.time_callable(lambda: calls.append(1), device=torch.device("cpu"), warmup=2, repeats=4)
    assert len(calls) == 6
    assert len(t.times) == 4
    assert t.minimum <= t.median <= max(t.times)
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        common.time_callable(lambda: None, device=torch.device("cpu"), repeats=0)


def test_time_interleaved_alternates_the_order_every_round():
    seq = []
    t = common.time_interleaved({"a": lambda: seq.append("a"), "b": lambda: seq.append("b")},
                                device=torch.device("cpu"), warmup=2, repeats=3)
    assert seq == ["a", "b", "b", "a"] + ["a", "b", "b", "a", "a", "b"]  # warm-up rounds, then timed rounds
    assert sorted(t) == ["a", "b"] and all(len(v.times) == 3 for v in t.values())


class _FakeClock:
    """perf_counter stand-in: each callable advances it by its own scripted duration."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def step(self, durations):
        it = iter(durations)
        return lambda: setattr(self, "now", self.now + next(it))


def test_time_interleaved_adaptive_rounds_stop_once_the_ratio_is_certain(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(common.time, "perf_counter", clock)
    steady = {"a": clock.step([2.0] * 100), "b": clock.step([1.0] * 100)}  # ratio exactly 2 every round
    t = common.time_interleaved(steady, device=torch.device("cpu"), warmup=0, repeats=5, max_repeats=50,
                                ratio=("a", "b"))
    assert len(t["a"].times) == 5  # already certain after the minimum
    rng = np.random.default_rng(0)
    noisy_a = list(2.0 * np.exp(rng.normal(0, 0.3, 100)))
    noisy = {"a": clock.step(noisy_a), "b": clock.step([1.0] * 100)}
    t = common.time_interleaved(noisy, device=torch.device("cpu"), warmup=0, repeats=5, max_repeats=40,
                                ratio=("a", "b"), rel_ci=0.02)
    assert len(t["a"].times) == 40  # +-30 % per round never gets within 2 % in 40 rounds: capped
    t = common.time_interleaved(noisy | {"a": clock.step(noisy_a)}, device=torch.device("cpu"), warmup=0,
                                repeats=5, max_repeats=40, ratio=("a", "b"), rel_ci=0.15)
    assert 5 < len(t["a"].times) < 40  # a loose target is met somewhere in between
    with pytest.raises(ValueError, match="'c'"):
        common.time_interleaved(steady, device=torch.device("cpu"), repeats=2, max_repeats=3, ratio=("a", "c"))
    with pytest.raises(ValueError, match="max_repeats must be >= repeats"):
        common.time_interleaved(steady, device=torch.device("cpu"), repeats=5, max_repeats=3)


def test_paired_ratios_and_median_ci():
    a = common.Timing([2.0, 4.0, 3.0, 100.0])
    b = common.Timing([1.0, 2.0, 1.0, 10.0])
    st = common.paired_ratios(a, b)
    assert st.ratios == [2.0, 2.0, 3.0, 10.0]
    d = st.as_dict()
    assert d["median"] == 2.5 and d["min"] == 2.0 and d["max"] == 10.0 and d["rounds"] == 4
    assert d["ci95_low"] <= d["median"] <= d["ci95_high"]
    with pytest.raises(ValueError, match="not aligned"):
        common.paired_ratios(a, common.Timing([1.0]))
    values = list(range(1, 101))  # n = 100: the 40th and 61st smallest (the textbook interval, 96.5 %)
    assert common.median_ci(values) == (40, 61)
    assert common.median_ci([5.0]) == (5.0, 5.0)
    with pytest.raises(ValueError):
        common.median_ci([])


def test_resolve_precisions_cpu():
    run, skipped = common.resolve_precisions(["fp32", "fp16"], torch.device("cpu"))
    assert run == ["fp32"]
    assert len(skipped) == 1 and "fp16" in skipped[0]
    default, _ = common.resolve_precisions(None, torch.device("cpu"))
    assert default[0] == "fp32" and "fp16" not in default
    with pytest.raises(ValueError, match="'fp8'"):
        common.resolve_precisions(["fp8"], torch.device("cpu"))


def test_resolve_device():
    assert common.resolve_device("cpu").type == "cpu"
    assert common.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda'"):
            common.resolve_device("cuda")


def test_environment_records_command_and_versions():
    env = common.environment(torch.device("cpu"))
    for key in ("cpu", "torch", "torch_threads", "command", "python", "device"):
        assert env[key] not in (None, "")
    assert env["torch"] == torch.__version__


# ---------------------------------------------------------------------------------------- baseline


@pytest.mark.parametrize("device", DEVICES)
def test_baseline_output_shapes(device):
    model = baseline_ctdet.ctdet_resnet18(num_classes=3).eval().to(device)
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 64, 96, device=device))
    assert out["hm"].shape == (2, 3, 16, 24)
    assert out["wh"].shape == (2, 2, 16, 24)
    assert out["reg"].shape == (2, 2, 16, 24)
    deconvs = [m for m in model.deconv if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(deconvs) == 3 and all(m.out_channels == 256 and m.kernel_size == (4, 4) for m in deconvs)


def test_baseline_config_validation():
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        baseline_ctdet.BaselineConfig(num_classes=0)
    with pytest.raises(ValueError, match="head_width.*'64'"):
        baseline_ctdet.BaselineConfig(head_width="64")


def _ctdet_decode_numpy(hm_logits, wh, reg, k, stride=4):
    """Brute force: every 3x3 local maximum, sorted by score (one image)."""
    C, H, W = hm_logits.shape
    hm = 1 / (1 + np.exp(-hm_logits.astype(np.float64)))
    cands = []
    for c in range(C):
        for y in range(H):
            for x in range(W):
                win = hm[c, max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
                score = hm[c, y, x] if hm[c, y, x] >= win.max() else 0.0
                cands.append((score, c, y, x))
    cands.sort(key=lambda t: -t[0])
    out = []
    for score, c, y, x in cands[:k]:
        cx, cy = x + reg[0, y, x], y + reg[1, y, x]
        w, h = wh[0, y, x], wh[1, y, x]
        out.append((score, c, [(cx - w / 2) * stride, (cy - h / 2) * stride, (cx + w / 2) * stride, (cy + h / 2) * stride]))
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_ctdet_decode_matches_brute_force(device):
    g = torch.Generator().manual_seed(0)
    B, C, H, W, K = 2, 3, 6, 7, 10
    out = {"hm": torch.randn(B, C, H, W, generator=g), "wh": torch.rand(B, 2, H, W, generator=g) * 5,
           "reg": torch.rand(B, 2, H, W, generator=g)}
    boxes, scores, labels = baseline_ctdet.ctdet_decode({k: v.to(device) for k, v in out.items()}, k=K)
    assert boxes.shape == (B, K, 4) and scores.shape == (B, K) and labels.shape == (B, K)
    for b in range(B):
        ref = _ctdet_decode_numpy(out["hm"][b].numpy(), out["wh"][b].numpy(), out["reg"][b].numpy(), K)
        np.testing.assert_allclose(scores[b].cpu().numpy(), [r[0] for r in ref], rtol=1e-5, atol=1e-6)
        nonzero = [i for i, r in enumerate(ref) if r[0] > 0]
        assert labels[b, nonzero].cpu().tolist() == [ref[i][1] for i in nonzero]
        np.testing.assert_allclose(boxes[b, nonzero].cpu().numpy(), np.array([ref[i][2] for i in nonzero]),
                                   rtol=1e-5, atol=1e-4)


def test_ctdet_decode_k_larger_than_map():
    out = {"hm": torch.zeros(1, 1, 2, 2), "wh": torch.zeros(1, 2, 2, 2), "reg": torch.zeros(1, 2, 2, 2)}
    boxes, scores, labels = baseline_ctdet.ctdet_decode(out, k=100)
    assert boxes.shape == (1, 4, 4)  # K clipped to C*H*W


# --------------------------------------------------------------------------------------- bench_model


@pytest.mark.parametrize("device", DEVICES)
def test_bench_model_smoke(device, tmp_path, capsys):
    bench_model = importlib.import_module("bench_model")
    path = tmp_path / "model.json"
    rc = bench_model.main(["--device", device, "--batch-sizes", "1", "2", "--sizes", "64", "--precisions", "fp32",
                           "--num-classes", "3", "--warmup", "0", "--repeats", "1", "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| model | input | batch | precision | forward ms/img |" in out
    assert "### Issue 3" in out
    data = json.loads(path.read_text())
    assert {(r["model"], r["batch"]) for r in data["rows"]} == {("ours", 1), ("ours", 2), ("baseline", 1), ("baseline", 2)}
    for r in data["rows"]:
        assert r["forward_ms_per_img"] > 0 and r["img_per_s"] > 0
        assert r["gmac_per_img"] is not None and r["gmac_per_img"] > 0
        assert r["forward"]["repeats"] == 1
    assert len(data["issue3"]) == 2
    assert data["env"]["command"].endswith("--json " + str(path))


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_bench_model_onnxruntime_rows(tmp_path, capsys):
    bench_model = importlib.import_module("bench_model")
    path = tmp_path / "model.json"
    rc = bench_model.main(["--device", "cpu", "--models", "ours", "ours-onnxruntime", "--batch-sizes", "1", "2",
                           "--sizes", "64", "--precisions", "fp32", "--num-classes", "3", "--warmup", "0",
                           "--repeats", "1", "--no-flops", "--json", str(path)])
    assert rc == 0
    rows = json.loads(path.read_text())["rows"]
    assert {(r["model"], r["batch"]) for r in rows} == {(m, b) for m in ("ours", "ours-onnxruntime") for b in (1, 2)}
    assert all(r["forward_ms_per_img"] > 0 for r in rows)
    assert "ours-onnxruntime = ours exported to ONNX" in capsys.readouterr().out


def test_bench_model_rejects_bad_size():
    bench_model = importlib.import_module("bench_model")
    with pytest.raises(SystemExit):
        bench_model.parse_args(["--sizes", "100"])


# -------------------------------------------------------------------------------------- bench_decode


def test_bench_decode_smoke(tmp_path, capsys):
    bench_decode = importlib.import_module("bench_decode")
    path = tmp_path / "decode.json"
    rc = bench_decode.main(["--device", "cpu", "--batch-sizes", "1", "2", "--size", "128", "--num-classes", "3",
                            "--objects", "4", "--topk", "12", "--warmup", "0", "--repeats", "1", "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| source | batch | map HxW |" in out
    data = json.loads(path.read_text())
    assert [r["batch"] for r in data["rows"]] == [1, 2]
    assert all(r["match"] == "yes" and r["speedup"] > 0 for r in data["rows"])
    assert all(r["dets_per_img"] > 0 for r in data["rows"])  # the synthetic objects are found
    for r in data["rows"]:  # speed-up = median of per-round ratios, with its spread; load at start and end
        st = r["speedup_stats"]
        assert st["rounds"] == 1 and st["min"] <= r["speedup"] == st["median"] <= st["max"]
        assert len(r["load_start"]) == 3 and len(r["load_end"]) == 3


def test_bench_decode_plans(tmp_path, monkeypatch, capsys):
    """--decode-plan picks where a host_sync decode runs (the GPU's 'copy' plan runs on a CPU too); the
    report and JSON say which one ran; 'host' is refused on a non-CPU device."""
    from centernet_ros import decode as decode_module

    bench_decode = importlib.import_module("bench_decode")
    monkeypatch.setattr(decode_module, "_HOST_SYNC_PLAN", dict(decode_module._HOST_SYNC_PLAN))  # restored after
    for plan in ("copy", "device"):
        path = tmp_path / f"{plan}.json"
        rc = bench_decode.main(["--device", "cpu", "--batch-sizes", "2", "--size", "128", "--num-classes", "3",
                                "--objects", "4", "--topk", "12", "--warmup", "0", "--repeats", "1",
                                "--decode-plan", plan, "--json", str(path)])
        assert rc == 0
        data = json.loads(path.read_text())
        assert data["config"]["decode_plan"] == plan and data["rows"][0]["match"] == "yes"
        assert f"plan: {plan}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="needs --device cpu"):
        bench_decode.set_decode_plan(torch.device("cuda"), "host")


def test_bench_decode_model_source(capsys):
    bench_decode = importlib.import_module("bench_decode")
    rc = bench_decode.main(["--device", "cpu", "--source", "model", "--batch-sizes", "1", "--size", "64",
                            "--num-classes", "2", "--topk", "8", "--warmup", "0", "--repeats", "1"])
    assert rc == 0
    assert "| model | 1 | 16x16 |" in capsys.readouterr().out


def test_compare_detects_mismatches():
    bench_decode = importlib.import_module("bench_decode")
    from centernet_ros.decode import DecodeConfig, decode
    from centernet_ros.reference_decode import reference_decode

    g = torch.Generator().manual_seed(1)
    out = bench_decode.synthetic_outputs(batch=1, num_classes=3, size=128, objects=5, generator=g)
    cfg = DecodeConfig(topk=20)
    ours = decode(out, cfg)
    ref = reference_decode(out, cfg)
    assert int(ours.num[0]) > 0
    assert bench_decode.compare(ours, ref, 1e-3)["match"]
    rb, rs, rl = ref[0]
    wrong_label = [(rb, rs, (rl + 1) % 3)]
    assert not bench_decode.compare(ours, wrong_label, 1e-3)["match"]
    shifted = [(rb + 0.5, rs, rl)]
    res = bench_decode.compare(ours, shifted, 1e-3)
    assert not res["match"] and res["max_box_diff"] == pytest.approx(0.5, abs=1e-4)
    fewer = [(rb[:-1], rs[:-1], rl[:-1])]
    assert not bench_decode.compare(ours, fewer, 1e-3)["match"]


def test_compare_empty():
    bench_decode = importlib.import_module("bench_decode")
    from centernet_ros.decode import Detections

    empty = Detections(torch.zeros(1, 5, 4), torch.zeros(1, 5), torch.full((1, 5), -1), torch.zeros(1, dtype=torch.long))
    ref = [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))]
    res = bench_decode.compare(empty, ref, 1e-3)
    assert res["match"] and res["max_box_diff"] == 0.0


# ----------------------------------------------------------------------------------------- bench_ros


def test_parse_resolution():
    bench_ros = pytest.importorskip("bench_ros")
    assert bench_ros.parse_resolution("640x360") == (640, 360)
    with pytest.raises(Exception, match="'64'"):
        bench_ros.parse_resolution("64")


def test_bench_ros_smoke(tmp_path):
    pytest.importorskip("rclpy")
    pytest.importorskip("vision_msgs.msg")
    path = tmp_path / "ros.json"
    cmd = [sys.executable, str(BENCH / "bench_ros.py"), "--device", "cpu", "--cameras", "2", "--resolutions", "160x96",
           "--input-size", "64", "64", "--duration", "2", "--warmup", "1", "--stage-repeats", "1", "--json", str(path),
           "--startup-timeout", "400"]  # node activation (ONNX export) took over 60 s on two cores under load
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| cameras | image | rate/cam | frames/s |" in proc.stdout
    assert "| batch | image | deserialize |" in proc.stdout
    data = json.loads(path.read_text())
    (row,) = data["rows"]
    assert row["cameras"] == 2 and row["published"] > 0
    assert row["answered"] > 0 and row["latency_p50_ms"] > 0  # frames made it through the node and back
    (stage,) = data["stages"]
    assert stage["batch"] == 2 and stage["forward_ms"] > 0


# ------------------------------------------------------------------------------------ bench_pipeline


@pytest.mark.parametrize("device", DEVICES)
def test_bench_pipeline_smoke(device, tmp_path, capsys):
    bench_pipeline = importlib.import_module("bench_pipeline")
    path = tmp_path / "pipeline.json"
    rc = bench_pipeline.main(["--device", device, "--cameras", "1", "3", "--resolutions", "96x64", "--input-size", "64", "64",
                              "--backend", "torch", "--iters", "2", "--warmup", "0", "--json", str(path)])
    assert rc == 0
    assert "| cameras | image | frames/s | latency p50 ms |" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert [(r["cameras"], r["resolution"], r["batches"]) for r in data["rows"]] == [(1, "96x64", 2), (3, "96x64", 2)]
    assert all(r["fps"] > 0 and r["latency_p99_ms"] >= r["latency_p50_ms"] > 0 for r in data["rows"])
    assert data["config"]["backend"] == "torch" and data["config"]["input_size"] == [64, 64]


def test_bench_pipeline_rejects_bad_input_size():
    bench_pipeline = importlib.import_module("bench_pipeline")
    with pytest.raises(SystemExit):
        bench_pipeline.parse_args(["--input-size", "100", "64"])


@pytest.mark.parametrize("size", [(3, 2), (64, 48), (640, 360)])
def test_synthetic_frames_for_any_size(tmp_path, size):
    """Without the clip (or OpenCV) the benchmarks fall back to synthetic frames of the asked size."""
    bench_ros = importlib.import_module("bench_ros")
    frames = bench_ros.load_frames(tmp_path / "missing.mp4", size, count=3)
    assert len(frames) == 3 and all(f.shape == (size[1], size[0], 3) and f.dtype == np.uint8 for f in frames)


# ---------------------------------------------------------------------------------------- bench_int8


def _yolo_dataset(root: Path, names: list[str], n: int = 4) -> Path:
    """A tiny YOLO dataset: ``n`` 96x128 images with one box each, ``valid`` split."""
    import cv2

    (root / "valid" / "images").mkdir(parents=True)
    (root / "valid" / "labels").mkdir(parents=True)
    (root / "data.yaml").write_text(f"val: valid/images\nnc: {len(names)}\nnames: {names!r}\n")
    rng = np.random.default_rng(0)
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (5, 5), 0)
        img[20:60, 30:90] = (40, 40, 220)
        cv2.imwrite(str(root / "valid" / "images" / f"{i}.png"), img)
        (root / "valid" / "labels" / f"{i}.txt").write_text(f"{i % len(names)} 0.469 0.417 0.469 0.417\n")
    return root


def test_bench_int8_smoke(tmp_path, capsys):
    pytest.importorskip("onnxruntime.quantization")
    pytest.importorskip("pycocotools")
    from centernet_ros.model import centernet_resnet18
    from centernet_ros.weights import save_model

    bench_int8 = importlib.import_module("bench_int8")
    torch.manual_seed(0)
    weights = tmp_path / "m.safetensors"
    save_model(weights, centernet_resnet18(num_classes=2, head_width=16, pool_width=8), class_names=["a", "b"],
               input_size=(64, 96))
    same = _yolo_dataset(tmp_path / "same", ["a", "b"])
    other = _yolo_dataset(tmp_path / "other", ["x", "y", "z"])
    class_map = tmp_path / "map.yaml"
    class_map.write_text("x: a\ny: b\nz: null\n")
    argv = ["--weights", str(weights), "--sizes", "64x96", "--warmup", "0", "--repeats", "2", "--max-repeats", "2",
            "--calib-data", str(same), "--calib-split", "valid", "--calib-count", "3", "--int8-dir", str(tmp_path / "q"),
            "--eval", f"--data {same} --split valid", f"--data {other} --split valid",
            f"--data {other} --split valid --class-map {class_map}"]
    path = tmp_path / "int8.json"
    assert bench_int8.main([*argv, "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| input HxW | batch | fp32 ms | INT8 ms | speed-up (median of rounds) |" in out
    assert "| split | input HxW | images | fp32 AP | INT8 AP | AP drop |" in out
    data = json.loads(path.read_text())
    (row,) = data["rows"]
    assert row["size"] == "64x96" and row["rounds"] == 2 and row["fp32_ms"] > 0 and row["int8_ms"] > 0
    assert row["load_start"] is not None and row["load_end"] is not None
    assert [a["dataset"] for a in data["ap"]] == ["same (valid)", "other (valid)"]  # the latter through the map
    for ap in data["ap"]:
        assert ap["images"] == 4 and ap["ap_drop"] == pytest.approx(ap["fp32_ap"] - ap["int8_ap"])
    assert len(data["notes"]) == 1 and "3 classes are not the model's 2" in data["notes"][0]
    (made,) = data["config"]["int8_files"].values()
    assert made["made_now"] and made["int8"]["images"] == 3
    # a second run reuses the up-to-date file; other calibration settings remake it
    assert bench_int8.main([*argv, "--no-ap", "--json", str(path)]) == 0
    assert not json.loads(path.read_text())["config"]["int8_files"]["64x96"]["made_now"]
    assert bench_int8.main([*argv[:-4], "--calib-count", "2", "--no-ap", "--no-speed", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["config"]["int8_files"]["64x96"]["int8"]["images"] == 2


def test_bench_int8_rejects_bad_sizes():
    bench_int8 = importlib.import_module("bench_int8")
    for bad in ("256", "250x448", "axb"):
        with pytest.raises(SystemExit):
            bench_int8.parse_args(["--sizes", bad])


# -------------------------------------------------------------------------------------- gpu_check.sh

BLOCKED = ("rclpy", "pycocotools", "vision_msgs", "sensor_msgs", "diagnostic_msgs", "launch", "launch_ros",
           "ament_index_python")


def test_gpu_check_smoke_runs_every_step_without_ros_or_pycocotools(tmp_path):
    """``gpu_check.sh --smoke``: every step of the GPU check in a tiny CPU version, in an interpreter where ROS
    and pycocotools cannot be imported (as on the GPU machines); all tables land in the output folder."""
    shadow = tmp_path / "shadow"
    for name in BLOCKED:  # packages that raise ImportError, ahead of the real ones on sys.path
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError('{name} blocked: a GPU machine has none', name='{name}')\n")
    out = tmp_path / "gpu_check"
    env = {**os.environ, "PYTHONPATH": str(shadow), "PYTHON": sys.executable, "OUT": str(out)}
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--smoke"], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    steps = ["cuda_tests", "model_eager", "model_cl", "decode", "decode_device", "pipeline", "pipeline_fast",
             "model_compile_fp32"]
    for name in steps:
        assert f"| {name} | ok |" in summary, summary
        assert (out / f"{name}.md").stat().st_size > 0
    assert "all steps passed" in summary
    cuda = (out / "cuda_tests.md").read_text()
    assert "| `test/test_decode.py::test_cuda_matches_cpu[soft]` | skipped | CUDA not available |" in cuda
    assert "test_gpu_paths.py::test_cuda_fp16_channels_last_compiled_matches_cpu" in cuda
    assert "failed 0" in cuda and "(mentioning CUDA: 0)" in cuda
    rows = json.loads((out / "model_eager.json").read_text())["rows"]
    assert {(r["model"], r["batch"]) for r in rows} == {(m, b) for m in ("ours", "baseline") for b in (1, 2)}
    assert all(r["load_start"] is not None and r["load_end"] is not None for r in rows)
    assert "| ours | 64 | 1 | fp32 |" in (out / "model_compile_fp32.md").read_text()
    assert [r["cameras"] for r in json.loads((out / "pipeline.json").read_text())["rows"]] == [1, 2]


def test_gpu_check_refuses_bad_arguments(tmp_path):
    for args, msg in ((["--bogus"], "unknown argument '--bogus'"), (["--budget", "5m"], "whole seconds, got '5m'")):
        proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), *args, "--out", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and msg in proc.stderr
    if not torch.cuda.is_available():  # the full check needs a GPU and says so
        proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--out", str(tmp_path)], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
        assert proc.returncode == 2 and "sees no CUDA device" in proc.stderr
