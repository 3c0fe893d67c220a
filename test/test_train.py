"""centernet-train / centernet-eval: configuration, schedule, tiny CPU runs (single process, resume, DDP)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from centernet_ros import evaluate as eval_cli
from centernet_ros import train as train_cli
from centernet_ros.train import config_from_args
from centernet_ros.train_config import OptimConfig, load_config, lr_factor

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "vehicles-openimages"
TINY = REPO / "config" / "train_tiny.yaml"
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason="shared vehicles dataset not available")


# ----------------------------------------------------------------------------------------------- config


def test_shipped_configs_load():
    cfg = load_config(REPO / "config" / "train_vehicles.yaml")
    assert cfg.train.input_size == (512, 512) and cfg.augment.output_size == (512, 512)
    assert cfg.augment.scale_range == (0.6, 1.3) and cfg.decode.topk == 70
    tiny = load_config(TINY)
    assert tiny.train.input_size == (128, 128) and tiny.augment.output_size == (128, 128)
    assert tiny.model.head_width == 16 and tiny.targets == {"max_objects": 16}
    assert cfg.targets["cut_corners"] == "ignore"
    cpu1 = load_config(REPO / "config" / "train_vehicles_cpu.yaml")
    cpu2 = load_config(REPO / "config" / "train_vehicles_cpu_stage2.yaml")
    assert cpu1.targets.get("cut_corners", "positive") == "positive" and cpu2.targets["cut_corners"] == "ignore"
    assert cpu2.model.init_weights == "runs/vehicles_cpu/best.safetensors"  # stage 1's output
    assert cpu2.train.eval_size == cpu1.train.eval_size and cpu2.data == cpu1.data
    cpu3 = load_config(REPO / "config" / "train_vehicles_cpu_stage3.yaml")
    assert cpu3.train.compile and not cpu2.train.compile and cpu3.targets["cut_corners"] == "ignore"
    assert cpu3.model.init_weights == "runs/vehicles_cpu_stage2/best.safetensors"
    assert [s.weight for s in cpu3.data.train_specs()] == [2.0, 1.0]
    cpu4 = load_config(REPO / "config" / "train_vehicles_cpu_stage4.yaml")
    assert cpu4.model.init_weights == "runs/vehicles_cpu_stage3/best.safetensors" and cpu4.train.compile
    assert cpu4.data == cpu3.data and cpu4.train.lr == 3.0e-4 and cpu4.train.epochs == 30
    cpu5 = load_config(REPO / "config" / "train_vehicles_cpu_stage5.yaml")
    assert cpu5.model.init_weights == "runs/vehicles_cpu_stage4/best.safetensors" and cpu5.train.ema_decay == 0.999
    cpu6 = load_config(REPO / "config" / "train_vehicles_cpu_stage6.yaml")
    assert [s.weight for s in cpu6.data.train_specs()] == [1.0, 1.0] and cpu6.train.lr == 3.0e-4
    cpu7 = load_config(REPO / "config" / "train_vehicles_cpu_stage7.yaml")
    assert cpu7.model.init_weights == "runs/vehicles_cpu_stage6/best.safetensors" and cpu7.data == cpu6.data
    assert (cpu7.train.lr, cpu7.train.epochs, cpu7.train.output_dir) == (2.0e-4, 32, "runs/vehicles_cpu_stage7")
    for path in sorted((REPO / "config").glob("train_*.yaml")):  # every recipe, ablation and later stage loads
        assert load_config(path).train.output_dir, path.name


def test_config_base_chain(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text(
        "data:\n  train: [{path: d1, weight: 1.0}, {path: d2}]\n  epoch_size: 64\n"
        "train:\n  lr: 0.01\n  epochs: 3\naugment:\n  flip_prob: 0.25\n"
    )
    (tmp_path / "sub" / "b.yaml").write_text(  # base is relative to the file's own folder
        "base: ../a.yaml\ntrain:\n  lr: 0.02\ndata:\n  train: [{path: d3}]\n"
    )
    (tmp_path / "c.yaml").write_text("base: sub/b.yaml\ntrain:\n  epochs: 9\ntargets:\n  max_objects: 8\n")
    cfg = load_config(tmp_path / "c.yaml", [("train.batch_size", 4)])
    assert cfg.train.lr == 0.02 and cfg.train.epochs == 9 and cfg.train.batch_size == 4  # key by key
    assert [s.path for s in cfg.data.train_specs()] == ["d3"]  # a list is replaced whole, not extended
    assert cfg.data.epoch_size == 64 and cfg.augment.flip_prob == 0.25  # untouched keys come from the bases
    assert cfg.targets == {"max_objects": 8}


@pytest.mark.parametrize(
    "files, needle",
    [
        ({"x.yaml": "base: x.yaml\n"}, "makes a cycle"),
        ({"x.yaml": "base: y.yaml\n", "y.yaml": "base: x.yaml\n"}, "'base: x.yaml' makes a cycle"),
        ({"x.yaml": "base: missing.yaml\n"}, "missing.yaml' not found"),
        ({"x.yaml": "base: [a.yaml]\n"}, "'base' must be a config file name, got \\['a.yaml'\\]"),
        ({"x.yaml": "base: y.yaml\n", "y.yaml": "- 1\n"}, "y.yaml' must hold a mapping"),
    ],
)
def test_config_base_errors(tmp_path, files, needle):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=needle):
        load_config(tmp_path / "x.yaml")


def test_flags_override_yaml():
    cfg = config_from_args([
        "--config", str(TINY), "--epochs", "7", "--lr", "0.01", "--input-size", "64", "96",
        "--set", "augment.flip_prob=0", "--set", "train.schedule=step", "--set", "train.step_epochs=[3, 5]",
        "--data-root", "/somewhere", "--no-amp", "--set", "targets.min_radius=1",
    ])
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.01 and cfg.train.input_size == (64, 96)
    assert cfg.augment.output_size == (64, 96) and cfg.augment.flip_prob == 0
    assert cfg.train.schedule == "step" and cfg.train.step_epochs == (3, 5)
    assert cfg.data.root == "/somewhere" and cfg.train.amp is False
    assert cfg.targets == {"max_objects": 16, "min_radius": 1}
    assert cfg.train.batch_size == 2  # untouched YAML value


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ([("train.lrr", 1.0)], "unknown keys in section 'train': \\['lrr'\\]"),
        ([("trian.lr", 1.0)], "unknown config sections \\['trian'\\]"),
        ([("train.lr", -1.0)], "train.lr must be > 0, got -1.0"),
        ([("train.input_size", [100, 128])], "multiples of 32, got \\(100, 128\\)"),
        ([("train.schedule", "linear")], "'linear'"),
        ([("augment.flip_prob", 2.0)], "flip_prob must be in \\[0, 1\\], got 2.0"),
        ([("targets.num_classes", 3)], "num_classes is taken from the dataset"),
        ([("targets.radius", 3)], "unknown keys in section 'targets'"),
        ([("targets.min_overlap", 1.5)], "1.5"),
        ([("data.format", "voc")], "'voc'"),
        ([("decode.topk", 0)], "topk must be an int >= 1, got 0"),
        ([("lr", 1.0)], "section.key"),
    ],
)
def test_bad_config_values_are_reported(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        load_config(TINY, overrides)


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_lr_schedule():
    cfg = OptimConfig(warmup_iters=10, warmup_factor=0.1, min_lr_ratio=0.05)
    f = [lr_factor(s, cfg=cfg, total_iters=110, iters_per_epoch=11) for s in range(111)]
    # linear warm-up from 0.1 (the cosine part is ~1 there)
    assert f[0] == pytest.approx(0.1) and f[5] == pytest.approx(0.55, rel=1e-3)
    assert f[10] == pytest.approx(1.0)
    # cosine: half-way at the middle of the decay, floor at the end, monotone
    assert f[60] == pytest.approx(0.05 + 0.95 * 0.5)
    assert f[110] == pytest.approx(0.05)
    assert all(a >= b - 1e-12 for a, b in zip(f[10:], f[11:]))
    step = OptimConfig(schedule="step", step_epochs=(2, 4), step_gamma=0.5, warmup_iters=0)
    g = [lr_factor(s, cfg=step, total_iters=60, iters_per_epoch=10) for s in (0, 19, 20, 39, 40, 59)]
    assert g == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])


# ----------------------------------------------------------------------------------------------- runs


def _tiny_args(out: Path, *extra: str) -> list[str]:
    return ["--config", str(TINY), "--data-root", str(SHARED), "--output-dir", str(out), "--no-progress", *extra]


@needs_data
def test_tiny_training_resume_and_eval(tmp_path, capsys):
    from centernet_ros.weights import load_model, read_meta

    torch.set_num_threads(1)
    out = tmp_path / "run"
    assert train_cli.main(_tiny_args(out, "--max-iters", "2")) == 0
    for name in ("last.safetensors", "last_state.pt", "best.safetensors", "log.csv", "config.yaml"):
        assert (out / name).is_file(), name
    state = torch.load(out / "last_state.pt", weights_only=True)
    assert int(state["step"]) == 2 and int(state["epoch"]) == 1
    assert all(int(s["step"]) == 2 for s in state["optimizer"]["state"].values())  # Adam took 2 steps
    meta = read_meta(out / "last.safetensors")
    assert meta.extra["step"] == 2 and meta.input_size == (128, 128)
    assert meta.class_names == ["Ambulance", "Bus", "Car", "Motorcycle", "Truck"]
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and rows[0].startswith("epoch,step,lr,loss")
    fields = dict(zip(rows[0].split(","), rows[1].split(",")))
    assert fields["step"] == "2" and math.isfinite(float(fields["loss"])) and fields["val_ap"] != ""
    first, _ = load_model(out / "last.safetensors")

    # resume: 2 more iterations on top (epoch 2 of 2)
    assert train_cli.main(_tiny_args(out, "--resume", str(out), "--epochs", "2", "--max-iters", "4")) == 0
    state = torch.load(out / "last_state.pt", weights_only=True)
    assert int(state["step"]) == 4 and int(state["epoch"]) == 2
    assert all(int(s["step"]) == 4 for s in state["optimizer"]["state"].values())
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["2", "4"]
    second, _ = load_model(out / "last.safetensors")
    w1, w2 = first.state_dict(), second.state_dict()
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)  # training went on

    # evaluation CLI on the result: both decodings in one table, JSON + Markdown written
    capsys.readouterr()
    ev_out = tmp_path / "eval"
    rc = eval_cli.main(["--weights", str(out / "best.safetensors"), "--data", str(SHARED), "--limit-images", "5",
                        "--batch-size", "3", "--workers", "0", "--out", str(ev_out), "--no-progress", "--topk", "20"])
    assert rc == 0
    report = json.loads((ev_out / "metrics.json").read_text())
    assert set(report["results"]) == {"triplet", "pairs"} and report["num_images"] == 5
    assert report["input_size"] == [128, 128] and report["decode"]["topk"] == 20
    for r in report["results"].values():
        assert 0.0 <= r["fd"] <= 1.0 and r["num_gt"] > 0
    md = (ev_out / "metrics.md").read_text()
    assert "| mode | AP | AP50 | AP75 | APs | APm | APl | FD | FD_S | FD_M | FD_L |" in md
    assert "| triplet |" in md and "| pairs |" in md
    assert "| mode | AP" in capsys.readouterr().out
    # --flip-test: each image also runs flipped, both decodings merge the two views
    rc = eval_cli.main(["--weights", str(out / "best.safetensors"), "--data", str(SHARED), "--limit-images", "3",
                        "--batch-size", "3", "--workers", "0", "--out", str(ev_out), "--no-progress", "--flip-test"])
    assert rc == 0
    report = json.loads((ev_out / "metrics.json").read_text())
    assert report["decode"]["flip_test"] is True and report["num_images"] == 3


@needs_data
def test_compile_wraps_the_training_forward_only(tmp_path, monkeypatch):
    """train.compile: the training forward goes through torch.compile's wrapper; the saved weights (plain
    model keys) do not. The real compilation takes minutes on a CPU (benchmarks/bench_train.py measures it)."""
    from centernet_ros.weights import load_model

    calls = []

    def fake_compile(module, *args, **kwargs):
        calls.append(type(module).__name__)

        def forward(*a, **k):
            calls.append("forward")
            return module(*a, **k)
        return forward

    monkeypatch.setattr(torch, "compile", fake_compile)
    out = tmp_path / "run"
    assert train_cli.main(_tiny_args(out, "--max-iters", "2", "--val-interval", "0", "--set", "train.compile=true")) == 0
    assert calls == ["CenterNetTriplet", "forward", "forward"], calls
    model, _ = load_model(out / "last.safetensors")
    assert not any(k.startswith("_orig_mod") for k in model.state_dict())


def test_init_weights_from_torchvision_checkpoint(tmp_path):
    from centernet_ros.backbone import ResNet18
    from centernet_ros.weights import load_model

    torch.manual_seed(1)
    backbone = ResNet18()
    ckpt = {k: v for k, v in backbone.state_dict().items()}
    ckpt["fc.weight"] = torch.zeros(1000, 512)  # torchvision classifier, ignored
    torch.save(ckpt, tmp_path / "resnet18.pth")
    out = tmp_path / "run"
    args = _tiny_args(out, "--max-iters", "1", "--init-weights", str(tmp_path / "resnet18.pth"),
                      "--lr", "1e-12", "--val-interval", "0")
    assert train_cli.main(args) == 0
    model, _ = load_model(out / "last.safetensors")
    torch.testing.assert_close(model.backbone.conv1.weight, backbone.conv1.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, backbone.layer4[1].conv2.weight,
                               atol=1e-6, rtol=0)
    assert (out / "best.safetensors").is_file()  # no validation: best = final model


def test_cli_errors_are_reported(tmp_path, capsys):
    assert train_cli.main(["--config", str(TINY), "--set", "train.lr=-1"]) == 2
    assert "train.lr must be > 0, got -1" in capsys.readouterr().err
    assert train_cli.main(["--config", str(TINY), "--data-root", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert eval_cli.main(["--weights", str(tmp_path / "none.safetensors"), "--data", str(tmp_path)]) == 2
    assert "none.safetensors" in capsys.readouterr().err


@needs_data
def test_ddp_two_cpu_processes(tmp_path):
    from centernet_ros.weights import read_meta

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "centernet_ros.train", *_tiny_args(out, "--batch-size", "4", "--limit-images", "8",
                                                     "--max-iters", "2")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = read_meta(out / "last.safetensors")
    assert meta.extra["world_size"] == 2 and meta.extra["step"] == 2
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # only rank 0 wrote
    assert proc.stdout.count("done:") == 1


@needs_data
def test_checkpoint_and_validation_intervals(tmp_path, monkeypatch):
    saved, validated = [], []
    real_save = train_cli.save_training_state
    real_validate = train_cli.validate

    def save(path, **kw):
        saved.append(kw["counters"]["epoch"])
        return real_save(path, **kw)

    def validate(*args, **kwargs):
        # the epoch being finished: one more than the rows already in the log
        validated.append(len((out / "log.csv").read_text().strip().splitlines()))
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(train_cli, "save_training_state", save)
    monkeypatch.setattr(train_cli, "validate", validate)
    out = tmp_path / "run"
    args = _tiny_args(out, "--epochs", "5", "--limit-images", "2", "--max-iters", "100", "--val-interval", "3",
                      "--set", "train.save_interval=2")
    assert train_cli.main(args) == 0
    assert saved == [2, 3, 4, 5]  # every 2nd epoch, at validation (epoch 3) and at the end
    assert validated == [3, 5]  # every 3rd epoch and after the last
    rows = (out / "log.csv").read_text().strip().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3", "4", "5"]


from devices import DEVICES  # noqa: E402


@needs_data
@pytest.mark.parametrize("device", DEVICES)
def test_amp_training_and_eval_on_device(tmp_path, device):
    """--amp is a no-op on CPU and bf16 autocast on CUDA; both must train and evaluate."""
    out = tmp_path / "run"
    args = _tiny_args(out, "--device", device, "--amp", "--max-iters", "2", "--val-interval", "0")
    assert train_cli.main(args) == 0
    state = torch.load(out / "last_state.pt", weights_only=True)
    assert int(state["step"]) == 2
    rc = eval_cli.main(["--weights", str(out / "last.safetensors"), "--data", str(SHARED), "--device", device,
                        "--limit-images", "3", "--workers", "0", "--no-progress", "--out", str(tmp_path / "ev")])
    assert rc == 0
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["device"].startswith(device)
