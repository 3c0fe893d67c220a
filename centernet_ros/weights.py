"""Safe model files: safetensors tensors plus JSON metadata (never unpickles).

Metadata keys (all strings): ``format`` = ``centernet_ros/1``, ``model_config`` (JSON of
``ModelConfig``), ``class_names`` (JSON list), ``input_size`` (JSON ``[H, W]``), optional ``extra`` (JSON).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .model import CenterNetTriplet, ModelConfig

__all__ = ["FORMAT", "WeightsError", "ModelMeta", "save_model", "read_meta", "load_model", "load_state_into"]

FORMAT = "centernet_ros/1"


class WeightsError(RuntimeError):
    """A model file is missing, unreadable, corrupt or does not fit the model."""


@dataclass
class ModelMeta:
    model_config: ModelConfig  # architecture the tensors belong to
    class_names: list[str]  # class index -> name
    input_size: tuple[int, int]  # (H, W) the model was trained for
    extra: dict = field(default_factory=dict)  # free-form (training recipe, metrics)


def save_model(
    path: str | Path,
    model: CenterNetTriplet,
    *,
    class_names: list[str],
    input_size: tuple[int, int] | list[int] | int,
    half: bool = False,
    extra: dict | None = None,
) -> Path:
    """Write ``model`` to ``path`` (``.safetensors``). ``half`` stores floating tensors as fp16."""
    from safetensors.torch import save_file

    model = getattr(model, "module", model)  # unwrap DDP
    if len(class_names) != model.cfg.num_classes:
        raise ValueError(f"{len(class_names)} class names for a {model.cfg.num_classes}-class model: {class_names!r}")
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) != 2 or any(v <= 0 or v % 32 for v in input_size):
        raise ValueError(f"input_size must be (H, W), positive multiples of 32, got {input_size!r}")
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if half and v.is_floating_point():
            v = v.half()
        state[k] = v.contiguous()
    meta = {
        "format": FORMAT,
        "model_config": model.cfg.to_json(),
        "class_names": json.dumps(list(class_names)),
        "input_size": json.dumps(list(input_size)),
        "extra": json.dumps(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a crash never leaves a half-written model
    return path


def read_meta(path: str | Path) -> ModelMeta:
    """Read only the metadata of a model file. Raises ``WeightsError`` with the path and the reason."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"model file not found: '{path}'")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise WeightsError(f"cannot read model file '{path}' (corrupt or not safetensors): {exc}") from None
    if meta.get("format") != FORMAT:
        raise WeightsError(f"'{path}' is not a centernet_ros model (format {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        cfg = ModelConfig.from_json(meta["model_config"])
        names = json.loads(meta["class_names"])
        size = tuple(int(v) for v in json.loads(meta["input_size"]))
        extra = json.loads(meta.get("extra", "{}"))
    except (KeyError, ValueError, TypeError) as exc:
        raise WeightsError(f"'{path}' has invalid metadata: {exc}") from None
    if not isinstance(names, list) or len(names) != cfg.num_classes:
        raise WeightsError(f"'{path}': class_names {names!r} do not match num_classes={cfg.num_classes}")
    return ModelMeta(model_config=cfg, class_names=[str(n) for n in names], input_size=size, extra=extra)


def load_state_into(model: nn.Module, path: str | Path, *, allow_missing: tuple[str, ...] = ()) -> None:
    """Load the tensors of ``path`` into ``model`` (strict; dtype converted to the model's).

    ``allow_missing``: key prefixes the file may lack (those tensors keep the model's initial values),
    e.g. ``("ct_head.size.",)`` to fine-tune an older model with the centre size head added.
    Raises ``WeightsError`` naming the path and the keys that do not fit."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"model file not found: '{path}'")
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise WeightsError(f"cannot read model file '{path}' (corrupt or not safetensors): {exc}") from None
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(allow_missing))
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise WeightsError(
            f"'{path}' does not fit this model: missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"shape mismatch {sorted(bad)[:4]}"
        )
    state = {k: v.to(own[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=not allow_missing)


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[CenterNetTriplet, ModelMeta]:
    """Build the model described by the file's metadata, load its tensors, move to ``device``, eval mode."""
    meta = read_meta(path)
    model = CenterNetTriplet(meta.model_config)
    load_state_into(model, path)
    return model.to(device).eval(), meta
