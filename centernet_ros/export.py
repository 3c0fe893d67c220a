"""Export a trained model to ONNX and TorchScript, with the class names and input size stored.

Usage:
    centernet-export --weights models/centernet_vehicles.safetensors --onnx out/model.onnx
    centernet-export --weights W.safetensors --torchscript out/model.pt --batch-size 4 --input-size 512
    centernet-export --weights W.safetensors --int8 --calib-data ../shared/data/vehicles-openimages \
        --calib-count 300 --input-size 256 448      # -> W.int8-256x448.onnx beside W (or --onnx PATH)

``--int8`` writes the ONNX file quantised for ONNX Runtime on a CPU (``int8.quantize_int8``: static QDQ,
per-channel int8 weights, uint8 activations calibrated on ``--calib-count`` images of ``--calib-data``, a
folder of images or a dataset root whose ``--calib-split`` images are used). Without ``--onnx`` it goes
to ``int8.default_int8_path``, where the detector's ``backend: onnxruntime-int8`` looks for it. Run it
again whenever the weights change: the file records the weights' SHA-256 and the detector refuses a
stale one.

The exported graphs take ``images`` Tensor[B, 3, H, W] (RGB, ImageNet-normalised, see
``preprocess``) and return the heads in ``CenterNetTriplet.output_names`` order (``model.OUTPUT_NAMES``,
then ``ct_size`` for a model with the centre size head); decoding stays in
``decode.decode`` (batched tensor ops) so every runtime shares one decoder. The batch dimension is
dynamic in ONNX; H and W are fixed to the stored input size.

Metadata: ONNX ``metadata_props`` and TorchScript ``_extra_files`` hold ``class_names`` (JSON list),
``input_size`` (JSON [H, W]), ``output_names`` (JSON list) and ``model_config`` (JSON).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .model import CenterNetTriplet

__all__ = ["ExportConfig", "export_onnx", "export_torchscript", "main", "onnx_bytes"]


@dataclass
class ExportConfig:
    weights: Path  # .safetensors model written by centernet-train / weights.save_model
    onnx: Path | None = None  # output ONNX path (with int8 and None: int8.default_int8_path beside the weights)
    torchscript: Path | None = None  # output TorchScript path (always fp32)
    input_size: int | tuple[int, int] | None = None  # N (square) or (H, W), multiples of 32; None = the weights' size
    batch_size: int = 1  # example batch used for tracing (ONNX keeps the batch dynamic)
    opset: int = 17  # ONNX opset
    int8: bool = False  # quantise the ONNX file (static QDQ, calibrated on calib_data), see int8.py
    calib_data: Path | None = None  # int8: folder of images, or a dataset root (its calib_split/images)
    calib_split: str = "train"  # int8: split folder of a dataset root
    calib_count: int = 300  # int8: calibration images (evenly spread over the sorted list)
    calib_method: str = "minmax"  # int8: minmax | percentile | entropy

    def __post_init__(self) -> None:
        if self.onnx is None and self.torchscript is None and not self.int8:
            raise ValueError("nothing to do: give --onnx and/or --torchscript (or --int8)")
        if self.input_size is not None:
            size = self.input_size
            size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
            if len(size) == 1:
                size = (size[0], size[0])
            if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % 32 for v in size):
                raise ValueError(f"input_size must be N or (H, W), positive multiples of 32, got {self.input_size!r}")
            self.input_size = size
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.int8:
            from .int8 import Int8Config

            if self.calib_data is None:
                raise ValueError("--int8 needs --calib-data (a folder of images or a dataset root)")
            Int8Config(self.calib_data, self.calib_split, self.calib_count, self.calib_method)  # validates
        elif self.calib_data is not None:
            raise ValueError(f"--calib-data {str(self.calib_data)!r} is only used with --int8")


def _metadata(model: CenterNetTriplet, input_size: tuple[int, int], class_names: list[str]) -> dict[str, str]:
    return {
        "class_names": json.dumps(list(class_names)),
        "input_size": json.dumps(list(input_size)),
        "output_names": json.dumps(list(model.output_names)),
        "model_config": model.cfg.to_json(),
    }


class _TupleModel(torch.nn.Module):
    def __init__(self, model: CenterNetTriplet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        out = self.model(images)
        return tuple(out[k] for k in self.model.output_names)


def _prepare(model: CenterNetTriplet, path, input_size, batch_size) -> tuple[Path | None, _TupleModel, torch.Tensor]:
    """Output folder (created; None: no file), fp32 CPU tuple-output wrapper in eval mode, example
    input Tensor[B, 3, H, W]."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _TupleModel(model.float().cpu()).eval()  # eval on the wrapper: exporters restore its mode recursively
    return path, wrapped, torch.zeros(batch_size, 3, *input_size)


def onnx_bytes(model: CenterNetTriplet, *, input_size: tuple[int, int], batch_size: int = 1, opset: int = 17) -> bytes:
    """The ONNX graph (dynamic batch, fixed ``input_size`` (H, W), no metadata) as bytes, in memory.

    Converts ``model`` to fp32 on the CPU in place (``nn.Module.float()`` / ``.cpu()``).  The tracer's
    warnings about Python control flow (shape checks that are constant for a fixed input size) are
    silenced.
    """
    _, wrapped, example = _prepare(model, None, input_size, batch_size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (example,),
            buf,
            input_names=["images"],
            output_names=list(model.output_names),
            dynamic_axes={"images": {0: "batch"}, **{k: {0: "batch"} for k in model.output_names}},
            opset_version=opset,
            dynamo=False,
        )
    return buf.getvalue()


def export_onnx(
    model: CenterNetTriplet,
    path: str | Path,
    *,
    input_size: tuple[int, int],
    class_names: list[str],
    batch_size: int = 1,
    opset: int = 17,
) -> Path:
    """Export to ONNX (dynamic batch) and attach metadata. Returns the path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    proto = onnx.load_from_string(onnx_bytes(model, input_size=input_size, batch_size=batch_size, opset=opset))
    for key, value in _metadata(model, input_size, class_names).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def export_torchscript(
    model: CenterNetTriplet,
    path: str | Path,
    *,
    input_size: tuple[int, int],
    class_names: list[str],
    batch_size: int = 1,
) -> Path:
    """Trace to TorchScript with the metadata in ``_extra_files``. Returns the path."""
    path, wrapped, example = _prepare(model, path, input_size, batch_size)
    with torch.no_grad():
        traced = torch.jit.trace(wrapped, (example,), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files=_metadata(model, input_size, class_names))
    return path


def main(argv: list[str] | None = None) -> int:
    from .weights import WeightsError, load_model

    parser = argparse.ArgumentParser(prog="centernet-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--onnx", type=Path)
    parser.add_argument("--torchscript", type=Path)
    parser.add_argument("--input-size", type=int, nargs="+", metavar="N", help="H [W] (default: the weights' size)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--opset", type=int, default=17)
    q = parser.add_argument_group("INT8 (ONNX Runtime, CPU)")
    q.add_argument("--int8", action="store_true", help="write the ONNX file quantised (static QDQ, calibrated)")
    q.add_argument("--calib-data", type=Path, help="folder of images, or a dataset root (uses <root>/<split>/images)")
    q.add_argument("--calib-split", default="train", help="split of a dataset root (default: train)")
    q.add_argument("--calib-count", type=int, default=300, help="calibration images (default: 300)")
    q.add_argument("--calib-method", default="minmax", choices=("minmax", "percentile", "entropy"),
                   help="activation ranges (default: minmax; see docs/benchmarks.md)")
    args = parser.parse_args(argv)
    try:
        if args.input_size is not None and len(args.input_size) > 2:
            raise ValueError(f"--input-size takes H [W], got {args.input_size!r}")
        cfg = ExportConfig(**{**vars(args), "input_size": tuple(args.input_size) if args.input_size else None})
        model, meta = load_model(cfg.weights)
    except (ValueError, WeightsError) as exc:
        print(f"centernet-export: error: {exc}", file=sys.stderr)
        return 2
    size = tuple(cfg.input_size) if cfg.input_size else tuple(meta.input_size)
    if cfg.int8:
        from .int8 import Int8Config, default_int8_path, quantize_int8

        path = cfg.onnx or default_int8_path(cfg.weights, size)
        qcfg = Int8Config(cfg.calib_data, cfg.calib_split, cfg.calib_count, cfg.calib_method)
        try:
            quantize_int8(model, path, weights=cfg.weights, input_size=size, class_names=meta.class_names, cfg=qcfg,
                          opset=cfg.opset, progress=True)
        except (FileNotFoundError, ImportError) as exc:
            print(f"centernet-export: error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {path} (INT8, input {size[0]}x{size[1]}, {len(meta.class_names)} classes)")
    elif cfg.onnx:
        export_onnx(model, cfg.onnx, input_size=size, class_names=meta.class_names, batch_size=cfg.batch_size, opset=cfg.opset)
        print(f"wrote {cfg.onnx} (input {size[0]}x{size[1]}, {len(meta.class_names)} classes)")
    if cfg.torchscript:
        export_torchscript(model, cfg.torchscript, input_size=size, class_names=meta.class_names, batch_size=cfg.batch_size)
        print(f"wrote {cfg.torchscript} (input {size[0]}x{size[1]}, {len(meta.class_names)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
