"""Training throughput on this machine: images/s of data loading alone, of the training step alone and of
the whole loop, for the settings that change it (precision, memory format, image cache, workers, compile).

Legend: B batch, H/W input size.

Usage::

    python benchmarks/bench_train.py                                  # the CPU recipe, every variant
    python benchmarks/bench_train.py --variants before after --rounds 5 --json out/bench/train.json
    python benchmarks/bench_train.py --compile                        # adds an 'after + torch.compile' row

Variants (each on the recipe's data, input size and batch; ``--config`` picks the recipe):

* ``before``: the loop as it was (fp32, contiguous tensors, JPEG decoding in the loop, 1 worker),
* ``+bf16``: bf16 autocast (CPUs with native bf16), ``+channels_last``, ``+cache`` (decoded images held in
  memory): the changes one at a time, cumulative; ``after`` = all of them (the recipe's settings),
* ``after, workers 0`` / ``after, workers 2``: the worker count,
* ``after + compile``: ``torch.compile`` of the model (``--compile``).

Rounds alternate the variants' order (forward on even rounds, reversed on odd ones) so that load changes on
a shared machine hit all of them alike; each figure is the median over rounds. The first ``--warmup`` steps
of every measurement are not timed.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from common import REPO_ROOT, environment, format_env, format_table, load_average, run_script

VARIANTS: dict[str, dict[str, Any]] = {
    "before": dict(amp=False, channels_last=False, cache=False, workers=1),
    "+bf16": dict(amp=True, channels_last=False, cache=False, workers=1),
    "+channels_last": dict(amp=True, channels_last=True, cache=False, workers=1),
    "after": dict(amp=True, channels_last=True, cache=True, workers=1),
    "after, workers 0": dict(amp=True, channels_last=True, cache=True, workers=0),
    "after, workers 2": dict(amp=True, channels_last=True, cache=True, workers=2),
    "after + compile": dict(amp=True, channels_last=True, cache=True, workers=1, compile=True),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO_ROOT / "config" / "train_vehicles_cpu.yaml")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="default: all but 'after + compile' (add it with --compile)")
    p.add_argument("--compile", action="store_true", help="add the 'after + compile' variant")
    p.add_argument("--steps", type=int, default=6, help="timed steps (batches) per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--limit-images", type=int, default=200, help="images per dataset (the cache fills quickly)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH")
    a = p.parse_args(argv)
    a.variants = a.variants or [v for v in VARIANTS if v != "after + compile"] + (["after + compile"] if a.compile else [])
    for name in ("steps", "rounds", "limit_images"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    return a


class Setup:
    """Data, model and optimiser of one variant (built once, reused by every round)."""

    def __init__(self, cfg, settings: dict[str, Any]) -> None:
        from centernet_ros.checkpoint import ModelEMA
        from centernet_ros.losses import CenterNetLoss
        from centernet_ros.model import centernet_resnet18
        from centernet_ros.targets import TargetConfig
        from centernet_ros.train import amp_setting
        from centernet_ros.train_support import Dist, build_data
        from centernet_ros.data import collate, worker_init_fn

        oc = dataclasses.replace(cfg.train, amp=settings["amp"], channels_last=settings["channels_last"],
                                 workers=settings["workers"])
        cfg = dataclasses.replace(cfg, train=oc, data=dataclasses.replace(cfg.data, cache_images=settings["cache"]))
        self.cfg, self.settings = cfg, settings
        self.device = torch.device("cpu")
        self.data = build_data(cfg, target_cfg_factory=lambda c: TargetConfig(num_classes=c, **cfg.targets),
                               dist=Dist())
        if settings["cache"]:
            self.data.train_set.fill_cache()
        torch.manual_seed(0)
        self.model = centernet_resnet18(num_classes=len(self.data.class_names), head_width=cfg.model.head_width,
                                        pool_width=cfg.model.pool_width)
        self.memory_format = torch.channels_last if oc.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format).train()
        self.net = torch.compile(self.model) if settings.get("compile") else self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=oc.lr)
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.amp, self.amp_dtype = amp_setting(oc, self.device)
        self.ema = ModelEMA(self.model, decay=oc.ema_decay, tau=oc.ema_tau) if oc.ema else None
        self.criterion = CenterNetLoss(cfg.loss)
        self.loader = torch.utils.data.DataLoader(
            self.data.train_set, batch_size=oc.batch_size, sampler=self.data.sampler, num_workers=oc.workers,
            collate_fn=collate, worker_init_fn=worker_init_fn, drop_last=True, persistent_workers=oc.workers > 0,
            prefetch_factor=4 if oc.workers > 0 else None)
        self.epoch = 0
        self.fixed = next(iter(self._batches()))

    def _batches(self):
        self.data.sampler.set_position(self.epoch, 0)
        self.epoch += 1
        return self.loader

    def step(self, batch) -> None:
        from centernet_ros.train import train_step

        train_step(self.net, self.model, batch, criterion=self.criterion, optimizer=self.optimizer,
                   scaler=self.scaler, device=self.device, memory_format=self.memory_format, amp=self.amp,
                   amp_dtype=self.amp_dtype, grad_clip=self.cfg.train.grad_clip, ema=self.ema)

    def measure(self, what: str, steps: int, warmup: int) -> float:
        """Images/s of ``what`` in ("load", "step", "loop") over ``steps`` batches after ``warmup``."""
        b = self.cfg.train.batch_size
        it = iter(self._batches()) if what != "step" else None
        t0 = None
        for i in range(warmup + steps):
            if i == warmup:
                t0 = time.perf_counter()
            batch = next(it) if it is not None else self.fixed
            if what != "load":
                self.step(batch)
        return b * steps / (time.perf_counter() - t0)


def run(args) -> dict[str, Any]:
    import sys

    sys.path.insert(0, str(REPO_ROOT))
    from centernet_ros.train_config import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [("data.limit_images", args.limit_images), ("train.progress", False)]
    if args.batch_size:
        overrides.append(("train.batch_size", args.batch_size))
    cfg = load_config(args.config, overrides)
    load_start = load_average()
    setups = {v: Setup(cfg, VARIANTS[v]) for v in args.variants}
    figures: dict[str, dict[str, list[float]]] = {v: {"load": [], "step": [], "loop": []} for v in args.variants}
    for r in range(args.rounds):
        order = args.variants if r % 2 == 0 else list(reversed(args.variants))
        for v in order:
            for what in ("load", "step", "loop"):
                figures[v][what].append(setups[v].measure(what, args.steps, args.warmup))
    rows = []
    base = statistics.median(figures[args.variants[0]]["loop"])
    for v in args.variants:
        med = {k: statistics.median(x) for k, x in figures[v].items()}
        rows.append({"variant": v, **VARIANTS[v], "load_img_s": med["load"], "step_img_s": med["step"],
                     "loop_img_s": med["loop"], "loop_vs_first": med["loop"] / base,
                     "loop_min_max": [min(figures[v]["loop"]), max(figures[v]["loop"])],
                     "rounds": figures[v]})
    env = environment(torch.device("cpu"), script=__file__, argv=args.argv, load_average_end=load_average(),
                      load_average_start=load_start)
    return {"env": env, "config": {"recipe": str(args.config), "input_size": list(cfg.train.input_size),
                                   "batch_size": cfg.train.batch_size, "steps": args.steps, "warmup": args.warmup,
                                   "rounds": args.rounds, "limit_images": args.limit_images}, "rows": rows}


def report(res: dict[str, Any]) -> str:
    c = res["config"]
    cols = [("variant", "variant"), ("amp", "bf16"), ("channels_last", "channels_last"), ("cache", "cache"),
            ("workers", "workers"), ("load_img_s", "loading img/s"), ("step_img_s", "step img/s"),
            ("loop_img_s", "whole loop img/s"), ("loop_vs_first", f"loop vs {res['rows'][0]['variant']}")]
    head = (f"Training throughput, input {c['input_size'][0]}x{c['input_size'][1]}, batch {c['batch_size']}, "
            f"median of {c['rounds']} rounds x {c['steps']} steps ({c['recipe']})")
    return "\n".join([head, "", format_table(res["rows"], cols), "", format_env(res["env"])])


def main(argv=None) -> int:
    return run_script(argv, parse_args=parse_args, run=run, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
