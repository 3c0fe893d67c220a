"""INT8 model for ONNX Runtime on a CPU: post-training static quantisation (QDQ, per-channel weights).

Legend: B batch, H/W network input height/width, N calibration images.

``quantize_int8`` exports the fp32 graph (``export.onnx_bytes``: fixed H x W, dynamic batch), calibrates
the activation ranges on N images letterboxed exactly as the ``Detector`` does (BGR file -> ``preprocess
.letterbox``), and writes a QDQ model (``onnxruntime.quantization.quantize_static``): weights int8 per
output channel, activations uint8 (asymmetric). uint8 activations matter on x86: ONNX Runtime's
U8S8 convolution kernels (AVX2 / AVX-512 VNNI) run this network 2.1x faster than fp32, its S8S8 path
here was 0.7x (slower than fp32; measured in docs/benchmarks.md).

The corner pools' max chains (``corner_pool._suffix_max`` / ``_prefix_max``: Slice, Max, Concat, about
100 ops per pool) are kept out of the quantiser (``nodes_to_exclude``): it has no quantised Max, and
quantising the Slices and Concats around fp32 Max ops added a dequantise/quantise pair per step.
``fuse_max_chains`` then runs each chain on the uint8 codes of its input: max, slicing and
concatenation commute with a monotone affine code -> value map, so the chain gives exactly the values
of the fp32 chain on the dequantised input, at a quarter of the memory traffic.

The file records in its ONNX ``metadata_props`` the keys of ``export`` (``class_names``, ``input_size``,
``output_names``, ``model_config``) plus ``int8`` (JSON: the calibration settings, the image count and
``weights_sha256`` of the model file it was made from). ``check_int8_model`` refuses a file made from
another weights file or for another input size, so a retrained model never runs with stale ranges.

Usage: ``centernet-export --weights W.safetensors --int8 --calib-data DATASET_OR_FOLDER --calib-count 300
--input-size H W`` (``export.main``); the node / ``Detector`` run it with ``backend: onnxruntime-int8``.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["CALIB_METHODS", "Int8Config", "calibration_images", "check_int8_model", "default_int8_path",
           "file_sha256", "fuse_max_chains", "quantize_int8", "read_onnx_metadata"]

CALIB_METHODS = ("minmax", "percentile", "entropy")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
POOL_SCOPES = ("/tl_pool/", "/br_pool/")  # ONNX node-name scopes of the corner pools (torch.onnx export)
CHAIN_OPS = ("Slice", "Max", "Concat")  # the max chains of corner_pool._suffix_max / _prefix_max


@dataclass
class Int8Config:
    """How to calibrate the INT8 model."""

    calib_data: str | Path  # folder of images, or a YOLO dataset root (images from <root>/<calib_split>/images)
    calib_split: str = "train"  # split of a dataset root (calibrate on training images, evaluate on valid)
    calib_count: int = 300  # images used (evenly spread over the sorted file list); 300 ~ 1-2 min at 320x320
    method: str = "minmax"  # activation ranges: minmax | percentile (99.999 %) | entropy (see docs/benchmarks.md)
    keep_pools_fp32: bool = True  # keep the corner pools' max chains out of the quantiser (then run on uint8 codes)
    fuse_chains: bool = True  # run the kept-out max chains on the uint8 codes of their input (exact, faster)

    def __post_init__(self) -> None:
        if not str(self.calib_data):
            raise ValueError(f"calib_data must be an image folder or a dataset root, got {self.calib_data!r}")
        if isinstance(self.calib_count, bool) or not isinstance(self.calib_count, int) or self.calib_count < 1:
            raise ValueError(f"calib_count must be an int >= 1, got {self.calib_count!r}")
        if self.method not in CALIB_METHODS:
            raise ValueError(f"method must be one of {CALIB_METHODS}, got {self.method!r}")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (raises OSError when unreadable)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_int8_path(weights: str | Path, input_size: Sequence[int]) -> Path:
    """Where the INT8 model of ``weights`` for input (H, W) lives unless told otherwise:
    ``<weights folder>/<weights stem>.int8-<H>x<W>.onnx``."""
    weights = Path(weights)
    h, w = (int(v) for v in input_size)
    return weights.with_name(f"{weights.stem}.int8-{h}x{w}.onnx")


def calibration_images(cfg: Int8Config) -> list[Path]:
    """``cfg.calib_count`` image files (or all, if fewer), evenly spread over the sorted file list.

    ``cfg.calib_data`` is a folder of images or a dataset root holding ``<calib_split>/images``.
    Raises FileNotFoundError (quoting the path) when there is no such folder or no image in it.
    """
    root = Path(cfg.calib_data)
    folder = root / cfg.calib_split / "images"
    if not folder.is_dir():
        folder = root
    if not folder.is_dir():
        raise FileNotFoundError(f"calibration data {str(root)!r}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"calibration data {str(folder)!r}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    n = min(cfg.calib_count, len(files))
    return [files[(i * len(files)) // n] for i in range(n)]


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (weights are not loaded)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def check_int8_model(path: str | Path, *, weights: str | Path, input_size: Sequence[int],
                     class_names: Sequence[str]) -> dict:
    """Check that the INT8 file at ``path`` was made from ``weights`` for ``input_size`` (H, W) and
    ``class_names``; returns its ``int8`` metadata. Raises FileNotFoundError / ValueError saying what
    differs and the command that makes a matching file."""
    path = Path(path)
    h, w = (int(v) for v in input_size)
    remake = (f"make it with: centernet-export --weights {weights} --int8 --calib-data <images or dataset> "
              f"--input-size {h} {w} --onnx {path}")
    if not path.is_file():
        raise FileNotFoundError(f"INT8 model {str(path)!r} not found; {remake}")
    meta = read_onnx_metadata(path)
    if "int8" not in meta:
        raise ValueError(f"{str(path)!r} is not an INT8 model written by centernet-export --int8; {remake}")
    info = json.loads(meta["int8"])
    if json.loads(meta.get("input_size", "null")) != [h, w]:
        raise ValueError(f"INT8 model {str(path)!r} is for input {meta.get('input_size')}, the detector runs "
                         f"[{h}, {w}]; {remake}")
    if json.loads(meta.get("class_names", "null")) != list(class_names):
        raise ValueError(f"INT8 model {str(path)!r} has classes {meta.get('class_names')}, the weights "
                         f"{list(class_names)}; {remake}")
    digest = file_sha256(weights)
    if info.get("weights_sha256") != digest:
        raise ValueError(f"INT8 model {str(path)!r} was quantised from another weights file (sha256 "
                         f"{str(info.get('weights_sha256'))[:12]}..., {str(weights)!r} is {digest[:12]}...); {remake}")
    return info


class _Reader:
    """``CalibrationDataReader``: one letterboxed image ``float32[1, 3, H, W]`` per ``get_next``."""

    def __init__(self, files: Sequence[Path], input_size: tuple[int, int]) -> None:
        self._files = iter(files)
        self._size = input_size

    def get_next(self):
        import cv2
        import torch

        from .preprocess import letterbox

        for f in self._files:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:  # unreadable file: skipped (calibration_images only lists image extensions)
                continue
            x, _ = letterbox([torch.from_numpy(img)], size=self._size, bgr=True)  # (1, 3, H, W)
            return {"images": x.numpy()}
        return None

    def __iter__(self):  # onnxruntime >= 1.20 iterates the reader
        while (item := self.get_next()) is not None:
            yield item


def _pool_chain_nodes(graph) -> list[str]:
    """Names of the corner pools' Slice / Max / Concat nodes (the max chains)."""
    return [n.name for n in graph.node if n.op_type in CHAIN_OPS and any(s in n.name for s in POOL_SCOPES)]


def fuse_max_chains(proto) -> int:
    """Run every max chain that reads one DequantizeLinear output on that DequantizeLinear's input codes.

    A chain is the connected set of Slice (data input), Max and Concat nodes fed by the DequantizeLinear;
    its outputs that leave the chain get a DequantizeLinear with the same scale / zero point (Shape nodes
    read the codes directly). Exact: ``dq(max(a, b)) == max(dq(a), dq(b))`` for a positive scale.
    Edits ``proto`` (an ``onnx.ModelProto``) in place; returns the number of chains moved to uint8.
    """
    import onnx

    graph = proto.graph
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))
    moved = 0
    new_nodes = []
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        src = dq.output[0]
        region, todo = [], [src]
        seen: set[int] = set()
        while todo:
            for node, idx in consumers.get(todo.pop(), []):
                if node.op_type in CHAIN_OPS and (node.op_type != "Slice" or idx == 0) and id(node) not in seen:
                    seen.add(id(node))
                    region.append(node)
                    todo.append(node.output[0])
        if not region:
            continue
        inside = {src} | {n.output[0] for n in region}
        data_inputs = [(n, i) for n in region for i, name in enumerate(n.input) if n.op_type != "Slice" or i == 0]
        if any(n.input[i] not in inside for n, i in data_inputs):
            continue  # a chain that mixes in another tensor: leave it in fp32
        rename = {src: dq.input[0], **{n.output[0]: n.output[0] + "_u8" for n in region}}
        for n in region:
            for i, name in enumerate(n.input):
                if (n.op_type != "Slice" or i == 0) and name in rename:
                    n.input[i] = rename[name]
            n.output[0] = rename[n.output[0]]
        for name in inside:
            for node, idx in consumers.get(name, []):
                if node.op_type == "Shape":  # shape of the codes == shape of the values
                    node.input[idx] = rename[name]
        for n in region:
            old = n.output[0][: -len("_u8")]
            if any(node.op_type != "Shape" and id(node) not in seen for node, _ in consumers.get(old, [])):
                new_nodes.append(onnx.helper.make_node("DequantizeLinear", [n.output[0], dq.input[1], dq.input[2]],
                                                       [old], name=n.name + "_u8_DequantizeLinear"))
        moved += 1
    graph.node.extend(new_nodes)
    # drop DequantizeLinear nodes nobody reads any more; stale fp32 value_info would clash with uint8
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in used]
    for n in dead:
        graph.node.remove(n)
    del graph.value_info[:]
    sorted_nodes = _toposort(list(graph.node), {i.name for i in graph.input} | {t.name for t in graph.initializer})
    del graph.node[:]
    graph.node.extend(sorted_nodes)
    return moved


def _toposort(nodes: list, available: set[str]) -> list:
    """Nodes in an order where every input is produced before it is read (ONNX requires it)."""
    out, pending, ready = [], list(nodes), set(available) | {""}
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a dangling input at {rest[0].name!r}")
        pending = rest
    return out


def quantize_int8(model, path: str | Path, *, weights: str | Path, input_size: tuple[int, int],
                  class_names: Sequence[str], cfg: Int8Config, opset: int = 17, progress: bool = False) -> Path:
    """Calibrate and write the INT8 model of ``model`` (a ``CenterNetTriplet``, loaded from ``weights``)
    for input ``input_size`` (H, W) to ``path``; returns the path.

    ``weights`` is hashed into the metadata (``check_int8_model``). Needs ``onnx`` and ``onnxruntime``;
    raises FileNotFoundError when ``cfg.calib_data`` holds no images.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .export import _metadata, onnx_bytes

    files = calibration_images(cfg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = file_sha256(weights)
    with tempfile.TemporaryDirectory(prefix="centernet_int8_") as tmp:
        fp32, pre, q = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        fp32.write_bytes(onnx_bytes(model, input_size=input_size, opset=opset))
        quant_pre_process(str(fp32), str(pre), skip_optimization=False)  # shape inference + graph clean-up
        exclude = _pool_chain_nodes(onnx.load(str(pre)).graph) if cfg.keep_pools_fp32 else []
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[cfg.method]
        reader = _Reader(files, input_size)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(files), desc="calibrate", unit="img")
            inner = reader.get_next

            def counted():
                item = inner()
                if item is not None:
                    bar.update(1)
                return item

            reader.get_next = counted  # type: ignore[method-assign]
        quantize_static(
            str(pre), str(q), reader, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
            nodes_to_exclude=exclude,
            # merge ranges every 16 images (MinMax otherwise keeps every intermediate tensor of every image)
            extra_options={"CalibMaxIntermediateOutputs": 16, "ActivationSymmetric": False},
        )
        if progress:
            bar.close()
        proto = onnx.load(str(q))
    fused = fuse_max_chains(proto) if cfg.keep_pools_fp32 and cfg.fuse_chains else 0
    del proto.metadata_props[:]
    meta = _metadata(model, input_size, list(class_names))
    info = {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
            "images": len(files), "weights": Path(weights).name, "weights_sha256": digest,
            "excluded_nodes": len(exclude), "uint8_chains": fused, "activations": "uint8", "weights_type": "int8",
            "per_channel": True, "format": "QDQ"}
    meta["int8"] = json.dumps(info)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path
