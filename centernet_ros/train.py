"""``centernet-train``: train the keypoint-triplet CenterNet (ResNet-18) on one or several datasets.

Letters: B batch, C classes, H/W map size, M max objects per image.

Usage::

    centernet-train --config config/train_vehicles_cpu.yaml              # the recipe of the bundled model
    centernet-train --config config/train_vehicles_cpu.yaml --resume runs/vehicles_cpu   # continue a run
    centernet-train --config config/train_vehicles.yaml --epochs 50 --output-dir runs/v2
    centernet-train --config config/train_tiny.yaml --max-iters 3 --limit-images 8   # smoke test
    torchrun --nproc_per_node 4 -m centernet_ros.train --config config/train_vehicles.yaml  # multi-GPU

Configuration: :mod:`centernet_ros.train_config` (YAML sections ``data``, ``model``, ``train``, ``augment``,
``targets``, ``loss``, ``decode``; unknown keys are errors). ``data.train`` lists datasets (YOLO or COCO, a
sampling weight and a class map each; classes mapped to null become ignore regions), ``data.val`` the
datasets validated one by one. A top-level ``base: other.yaml`` makes a file a list of changes to another
config (key by key; the stage configs of the bundled model are built so). Command-line flags override the
file: the named flags below, or any key with ``--set section.key=value`` (value parsed as YAML).

Recipe: Adam, linear LR warm-up then cosine decay (or steps), mixed precision (CUDA autocast; bf16 autocast
on CPUs with bf16 support), gradient-norm clipping, an exponential moving average of the weights
(validated, saved and shipped). The global ``batch_size`` is split over the processes of a ``torchrun``
launch (DistributedDataParallel; only rank 0 logs, evaluates and saves).

Stops: SIGTERM or Ctrl-C ends the run after the current iteration with a checkpoint (exit code 143 / 130);
``--resume <run folder>`` continues it, and a run killed outright (SIGKILL, power) continues from its last
checkpoint (every epoch, every ``checkpoint_minutes`` and ``checkpoint_iters``). The sample order and every
augmentation come from the seed, the epoch and the position alone, so a resumed run gives the same weights
as an uninterrupted one.

Outputs in ``output_dir``: ``last_state.pt`` (the resumable checkpoint, ``torch.load(weights_only=True)``),
``last.safetensors`` (the weights to use: the EMA when enabled), ``best.safetensors`` (best mean triplet AP
over the validation datasets; the final weights when there is no validation), ``log.csv``, ``val.jsonl``
(per-dataset validation), ``config.yaml`` and TensorBoard events when ``tensorboard`` is installed.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from .checkpoint import STATE_NAME, ModelEMA, load_training_state, restore_rng, save_training_state
from .data import collate, normalize_images
from .train_config import TrainConfig, config_to_dict, load_config, lr_factor
from .train_support import (CsvLog, StopSignals, build_data, cpu_bf16_supported, init_distributed, tensorboard,
                            train_worker_init, validate, write_val_json)

__all__ = ["train", "train_step", "amp_setting", "main", "build_parser", "config_from_args"]


def _autocast(device: torch.device, amp: bool, dtype: torch.dtype):
    """The autocast context of a training step (a no-op context when mixed precision is off)."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train_step(net, model, batch: dict, *, criterion, optimizer, scaler, device: torch.device,
               memory_format: torch.memory_format, amp: bool, amp_dtype: torch.dtype, grad_clip: float | None,
               ema: ModelEMA | None = None) -> dict[str, torch.Tensor]:
    """One optimisation step on a :func:`data.collate` batch (uint8 images normalised on ``device``).

    ``net`` is what runs the forward (``model`` or its DDP wrapper); returns the detached loss terms.
    """
    x = normalize_images(batch["image"].to(device, non_blocking=True))  # (B, 3, H, W)
    x = x.contiguous(memory_format=memory_format)
    targets = {k: v.to(device, non_blocking=True) for k, v in batch["targets"].items()}
    with _autocast(device, amp, amp_dtype):
        outputs = net(x)
    loss, terms = criterion(outputs, targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    if ema is not None:
        ema.update(model)
    return terms


def amp_setting(oc, device: torch.device) -> tuple[bool, torch.dtype]:
    """``(use autocast, dtype)`` for ``train`` options ``oc`` on ``device``: CUDA autocast, or CPU bf16
    autocast where the CPU has native bf16 (else fp32)."""
    dtype = torch.bfloat16 if oc.amp_dtype == "bfloat16" else torch.float16
    if not oc.amp:
        return False, dtype
    if device.type == "cuda":
        return True, dtype
    if device.type == "cpu" and dtype == torch.bfloat16 and cpu_bf16_supported():
        return True, dtype
    return False, dtype


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training per ``cfg``.

    Returns ``{"best": path, "last": path, "best_ap": float | None, "steps": int, "stopped": str | None}``
    (``stopped``: why the run left before its end: "SIGTERM", "SIGINT" or "stop_after_iters").
    """
    from tqdm import tqdm

    from .losses import CenterNetLoss
    from .model import centernet_resnet18
    from .targets import TargetConfig
    from .weights import save_model

    oc = cfg.train
    dist, device = init_distributed(oc.device)
    try:
        torch.manual_seed(oc.seed)
        if oc.batch_size % dist.world:
            raise ValueError(f"train.batch_size={oc.batch_size} is not divisible by {dist.world} processes")
        per_proc = oc.batch_size // dist.world
        data = build_data(cfg, target_cfg_factory=lambda c: TargetConfig(num_classes=c, **cfg.targets), dist=dist)
        names = data.class_names

        state = load_training_state(oc.resume) if oc.resume else None
        if state is not None:
            saved = state["counters"].get("class_names")
            if saved is not None and list(saved) != names:
                raise ValueError(f"cannot resume: the checkpoint has classes {list(saved)}, the data has {names}")
        model = centernet_resnet18(
            num_classes=len(names), weights=None if state is not None else cfg.model.init_weights,
            head_width=cfg.model.head_width, pool_width=cfg.model.pool_width, cascade=cfg.model.cascade,
            center_pooling=cfg.model.center_pooling, center_size=cfg.model.center_size,
        )
        if state is not None:
            model.load_state_dict(state["model"])
        if dist.enabled and oc.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        memory_format = torch.channels_last if oc.channels_last else torch.contiguous_format
        model = model.to(device, memory_format=memory_format)
        net = model
        if dist.enabled:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if oc.compile:  # a compiled wrapper: model (its state_dict, EMA, validation, saving) stays eager
            net = torch.compile(net)
        optimizer = torch.optim.Adam(model.parameters(), lr=oc.lr, weight_decay=oc.weight_decay)
        use_amp, amp_dtype = amp_setting(oc, device)
        scaler = torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu",
                                      enabled=use_amp and device.type == "cuda" and amp_dtype == torch.float16)
        ema = ModelEMA(model, decay=oc.ema_decay, tau=oc.ema_tau) if oc.ema else None
        criterion = CenterNetLoss(cfg.loss)

        epoch, step, position, best_ap = 0, 0, 0, None
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            if "scaler" in state and scaler.is_enabled():
                scaler.load_state_dict(state["scaler"])
            if ema is not None:
                if "ema" not in state:
                    raise ValueError(f"cannot resume {oc.resume!r} with train.ema on: the checkpoint has no EMA")
                ema.load_state_dict(state["ema"])
            c = state["counters"]
            epoch, step, position = int(c["epoch"]), int(c["step"]), int(c.get("position", 0))
            best_ap = float(c["best_ap"]) if float(c.get("best_ap", -1)) >= 0 else None
            restore_rng(state)
        del state

        sampler = data.sampler
        iters_per_epoch = sampler.epoch_size // oc.batch_size
        total_iters = oc.epochs * iters_per_epoch
        if oc.max_iters is not None:
            total_iters = min(total_iters, oc.max_iters)
        last_epoch = min(oc.epochs, math.ceil(total_iters / iters_per_epoch))
        if data.train_set.caches_images:
            data.train_set.fill_cache(progress=oc.progress and dist.main)
        loader = torch.utils.data.DataLoader(
            data.train_set, batch_size=per_proc, sampler=sampler, num_workers=oc.workers, collate_fn=collate,
            worker_init_fn=train_worker_init, pin_memory=device.type == "cuda", drop_last=True,
            persistent_workers=oc.workers > 0, prefetch_factor=4 if oc.workers > 0 else None,
        )

        out_dir = Path(oc.output_dir)
        log = tb = None
        if dist.main:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
            log = CsvLog(out_dir / "log.csv")
            tb = tensorboard(out_dir)
        eval_size = oc.eval_size or oc.input_size
        save_kw = dict(class_names=names, input_size=eval_size)
        recipe = {"config": config_to_dict(cfg), "world_size": dist.world}
        shipped = lambda: ema.module if ema is not None else model  # noqa: E731 - the weights to use

        def checkpoint(epoch_now: int, position_now: int) -> None:
            if not dist.main:
                return
            counters = {"epoch": epoch_now, "step": step, "position": position_now,
                        "best_ap": -1.0 if best_ap is None else best_ap, "class_names": list(names)}
            save_training_state(out_dir / STATE_NAME, model=model, optimizer=optimizer,
                                scaler=scaler if scaler.is_enabled() else None, ema=ema, counters=counters)
            save_model(out_dir / "last.safetensors", shipped(), **save_kw,
                       extra={**recipe, "epoch": epoch_now, "step": step, "position": position_now})

        pbar = tqdm(total=total_iters, initial=step, unit="it", dynamic_ncols=True, file=sys.stderr,
                    disable=not (dist.main and oc.progress))
        stopped: str | None = None
        iters_here = 0
        last_ckpt = t_log = time.monotonic()
        it_log = 0
        model.train()
        with StopSignals() as signals:
            while epoch < last_epoch and step < total_iters and stopped is None:
                sampler.set_position(epoch, position)
                pbar.set_description(f"epoch {epoch + 1}/{oc.epochs}")
                sums = torch.zeros(5, device=device)  # focal, pull, push, regr, total
                n_it, t0, lr = 0, time.time(), oc.lr
                for batch in loader:
                    lr = oc.lr * lr_factor(step, cfg=oc, total_iters=total_iters, iters_per_epoch=iters_per_epoch)
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                    terms = train_step(net, model, batch, criterion=criterion, optimizer=optimizer, scaler=scaler,
                                       device=device, memory_format=memory_format, amp=use_amp,
                                       amp_dtype=amp_dtype, grad_clip=oc.grad_clip, ema=ema)
                    step += 1
                    n_it += 1
                    iters_here += 1
                    position += oc.batch_size
                    sums += torch.stack([terms[k].float() for k in ("focal", "pull", "push", "regr", "total")])
                    pbar.update(1)
                    if n_it % oc.log_every == 0 or step == total_iters:
                        vals = torch.stack([terms[k].float() for k in ("total", "focal", "pull", "push", "regr")])
                        vals = vals.tolist()  # one device sync
                        if not math.isfinite(vals[0]):
                            raise FloatingPointError(f"loss is not finite at iteration {step}: {vals[0]!r}")
                        text = (f"loss {vals[0]:.3f} focal {vals[1]:.3f} pull {vals[2]:.3f} push {vals[3]:.3f} "
                                f"regr {vals[4]:.3f} lr {lr:.2e}")
                        if model.cfg.center_size:  # the size part of regr
                            text = text.replace(" lr ", f" (size {float(terms['size']):.3f}) lr ")
                        pbar.set_postfix_str(text)
                        if not oc.progress and dist.main:  # a log file instead of a bar: one line per log_every
                            rate = (time.monotonic() - t_log) / max(1, iters_here - it_log)
                            print(f"iteration {step}/{total_iters} epoch {epoch + 1}: {text} ({rate:.2f} s/it)",
                                  file=sys.stderr, flush=True)
                            t_log, it_log = time.monotonic(), iters_here
                    if signals.received is not None:
                        stopped = signal.Signals(signals.received).name
                    elif oc.stop_after_iters is not None and iters_here >= oc.stop_after_iters:
                        stopped = "stop_after_iters"
                    if step >= total_iters or stopped is not None:
                        break
                    due_time = oc.checkpoint_minutes > 0 and time.monotonic() - last_ckpt >= 60 * oc.checkpoint_minutes
                    due_iter = oc.checkpoint_iters is not None and step % oc.checkpoint_iters == 0
                    if (due_time or due_iter) and position < sampler.epoch_size:
                        checkpoint(epoch, position)
                        last_ckpt = time.monotonic()
                if position + oc.batch_size > sampler.epoch_size:  # the epoch is complete
                    epoch, position = epoch + 1, 0
                    finished = step >= total_iters or epoch >= last_epoch
                    if dist.enabled:
                        torch.distributed.all_reduce(sums)
                        sums /= dist.world
                    means = (sums / max(1, n_it)).tolist()
                    row = dict(zip(("focal", "pull", "push", "regr", "loss"), (f"{v:.5f}" for v in means)))
                    row.update(epoch=epoch, step=step, lr=f"{lr:.6g}", epoch_time_s=f"{time.time() - t0:.1f}")
                    do_val = data.val_sets and oc.val_interval > 0 and (epoch % oc.val_interval == 0 or finished)
                    if dist.main:
                        if do_val:
                            val = validate(shipped(), data, cfg, device=device,
                                           batch_size=oc.val_batch_size or per_proc, amp=use_amp)
                            write_val_json(out_dir / "val.jsonl", epoch, step, val)
                            row.update({f"val_{k}": f"{val[k]:.5f}" for k in ("ap", "ap50", "fd", "ap_pairs",
                                                                              "ap50_pairs")})
                            per = " ".join(f"{n} {100 * r['triplet'].ap:.1f}/{100 * r['triplet'].ap50:.1f}"
                                           for n, r in val["datasets"].items())
                            pbar.write(f"epoch {epoch}: val AP {100 * val['ap']:.1f} AP50 {100 * val['ap50']:.1f} "
                                       f"FD {100 * val['fd']:.1f} (pairs AP {100 * val['ap_pairs']:.1f}) [{per}]")
                            if not math.isnan(val["ap"]) and (best_ap is None or val["ap"] > best_ap):
                                best_ap = val["ap"]
                                save_model(out_dir / "best.safetensors", shipped(), **save_kw, extra={
                                    **recipe, "epoch": epoch, "step": step,
                                    "val": {n: r["triplet"].to_dict() for n, r in val["datasets"].items()}})
                        log.write(row)
                        if tb is not None:
                            for k in ("loss", "focal", "pull", "push", "regr"):
                                tb.add_scalar(f"train/{k}", float(row[k]), step)
                            tb.add_scalar("train/lr", lr, step)
                            for k in ("ap", "ap50", "fd"):
                                if f"val_{k}" in row:
                                    tb.add_scalar(f"val/{k}", float(row[f"val_{k}"]), step)
                    if do_val or finished or epoch % oc.save_interval == 0 or stopped is not None:
                        checkpoint(epoch, position)
                        last_ckpt = time.monotonic()
                    if dist.enabled:
                        torch.distributed.barrier()
                elif stopped is not None:
                    checkpoint(epoch, position)
            if stopped is None and step >= total_iters and position:
                checkpoint(epoch, position)  # max_iters ended the run inside an epoch
        pbar.close()
        if dist.main:
            if stopped is None and best_ap is None:  # no validation: the final weights are the ones to use
                save_model(out_dir / "best.safetensors", shipped(), **save_kw,
                           extra={**recipe, "epoch": epoch, "step": step})
            if stopped is not None:
                print(f"centernet-train: stopped ({stopped}) at iteration {step}; continue with "
                      f"--resume {out_dir}", file=sys.stderr)
            if tb is not None:
                tb.close()
        return {"best": str(out_dir / "best.safetensors"), "last": str(out_dir / "last.safetensors"),
                "best_ap": best_ap, "steps": step, "stopped": stopped}
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------

# flag -> (section.key, type)
_FLAGS = {
    "data_root": ("data.root", str),
    "epochs": ("train.epochs", int),
    "batch_size": ("train.batch_size", int),
    "lr": ("train.lr", float),
    "workers": ("train.workers", int),
    "device": ("train.device", str),
    "output_dir": ("train.output_dir", str),
    "resume": ("train.resume", str),
    "init_weights": ("model.init_weights", str),
    "head_width": ("model.head_width", int),
    "max_iters": ("train.max_iters", int),
    "limit_images": ("data.limit_images", int),
    "val_interval": ("train.val_interval", int),
    "seed": ("train.seed", int),
    "stop_after_iters": ("train.stop_after_iters", int),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="centernet-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help="YAML config (see config/train_vehicles.yaml)")
    for flag, (key, typ) in _FLAGS.items():
        p.add_argument("--" + flag.replace("_", "-"), type=typ, help=f"overrides {key}")
    p.add_argument("--input-size", type=int, nargs="+", metavar="N", help="overrides train.input_size (H [W])")
    amp = p.add_mutually_exclusive_group()
    amp.add_argument("--amp", dest="amp", action="store_true", default=None, help="mixed precision on CUDA")
    amp.add_argument("--no-amp", dest="amp", action="store_false", help="full precision")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key (value parsed as YAML); repeatable")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> TrainConfig:
    a = build_parser().parse_args(argv)
    overrides: list[tuple[str, Any]] = []
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set needs SECTION.KEY=VALUE, got {item!r}")
        overrides.append((key.strip(), yaml.safe_load(value)))
    for flag, (key, _) in _FLAGS.items():
        v = getattr(a, flag)
        if v is not None:
            overrides.append((key, v))
    if a.input_size:
        overrides.append(("train.input_size", list(a.input_size)))
    if a.amp is not None:
        overrides.append(("train.amp", a.amp))
    if a.no_progress:
        overrides.append(("train.progress", False))
    return load_config(a.config, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    from .weights import WeightsError

    try:
        cfg = config_from_args(argv)
        result = train(cfg)
    except (ValueError, OSError, WeightsError) as exc:
        print(f"centernet-train: error: {exc}", file=sys.stderr)
        return 2
    if result["stopped"] in ("SIGTERM", "SIGINT"):
        return 128 + int(signal.Signals[result["stopped"]])
    if int(os.environ.get("RANK", "0")) == 0 and result["stopped"] is None:
        best = "n/a" if result["best_ap"] is None else f"{100 * result['best_ap']:.1f}"
        print(f"done: {result['steps']} iterations, best val AP {best}, model {result['best']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
