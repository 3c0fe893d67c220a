"""Resumable training state: the exponential moving average of the weights and the checkpoint file.

A run stopped at any moment (SIGTERM, SIGKILL, the machine gone) continues from its last checkpoint and
produces the same weights as a run that was never stopped: the checkpoint holds everything the next
iteration depends on (model, EMA, optimiser, GradScaler, iteration, epoch and position in the epoch's
sample order, best validation score, RNG states), and it is written to a temporary file and renamed, so a
kill while writing leaves the previous checkpoint intact.

The file is a ``torch.save`` of tensors, numbers, strings, lists and dicts only: it loads with
``torch.load(weights_only=True)`` (nothing is unpickled).
"""
from __future__ import annotations

import copy
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["ModelEMA", "save_training_state", "load_training_state", "STATE_NAME"]

STATE_NAME = "last_state.pt"  # the resumable checkpoint inside a run folder


class ModelEMA:
    """Exponential moving average of a model's parameters and buffers (Polyak averaging; the ramped decay
    of YOLOv5's ``ModelEMA``): after update ``u`` (1-based), ``ema = d * ema + (1 - d) * w`` with
    ``d = decay * (1 - exp(-u / tau))``; integer buffers (BatchNorm's ``num_batches_tracked``) are copied.

    ``module`` is an eval-mode copy on the model's device, float32 whatever the model's autocast does.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9998, tau: int = 2000) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        if tau < 1:
            raise ValueError(f"tau must be >= 1, got {tau!r}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = float(decay), int(tau), 0

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        src = model.state_dict()
        for k, v in self.module.state_dict().items():
            w = src[k].detach()
            if v.dtype.is_floating_point:
                v.mul_(d).add_(w.to(v.dtype), alpha=1.0 - d)
            else:
                v.copy_(w)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def _rng_state() -> dict[str, Any]:
    _, keys, pos, *_ = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(keys.astype(np.int64)),  # MT19937 key words (uint32 values)
        "numpy_pos": int(pos),
        "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    raw = state["numpy"].numpy()
    # checkpoints of 2026-11-30 before 09:20 UTC stored the key words as little-endian bytes
    if raw.dtype == np.uint8:
        raw = np.frombuffer(raw.tobytes(), dtype="<u4")
    keys = raw.astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(state["numpy_pos"]), 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    ema: ModelEMA | None,
    counters: dict[str, int | float | str],
) -> None:
    """Write the resumable checkpoint atomically (``path.tmp`` then rename; fsync'd).

    ``counters``: plain numbers / strings such as ``step``, ``epoch``, ``position`` (draws of the epoch
    already used), ``best_ap`` (-1: none), ``class_names`` JSON.
    """
    path = Path(path)
    state: dict[str, Any] = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng": _rng_state(),
        "counters": dict(counters),
    }
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    if ema is not None:
        e = ema.state_dict()
        state["ema"] = {"module": {k: v.detach().cpu() for k, v in e["module"].items()}, "updates": e["updates"]}
    # legacy top-level fields (readers of earlier checkpoints look here)
    for k in ("step", "epoch"):
        if k in counters:
            state[k] = torch.tensor(int(counters[k]))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_training_state` (``weights_only=True``).

    Raises ``ValueError`` naming the file when it is missing, truncated or not a training state.
    """
    path = Path(path)
    if path.is_dir():
        path = path / STATE_NAME
    if not path.is_file():
        raise ValueError(f"cannot resume: '{path}' not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / foreign file
        raise ValueError(f"cannot resume from '{path}': not a readable training state ({exc})") from None
    if not isinstance(state, dict) or "model" not in state or "counters" not in state:
        raise ValueError(f"cannot resume from '{path}': not a training state of this version (no model/counters)")
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put the process RNGs back to a checkpoint's."""
    _set_rng_state(state["rng"])
